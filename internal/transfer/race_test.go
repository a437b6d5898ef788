//go:build race

package transfer

// raceEnabled: the race detector slows the compressors down tenfold, so
// tests of decisions that weigh their speed do not hold.
const raceEnabled = true
