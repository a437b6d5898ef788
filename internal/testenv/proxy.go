package testenv

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy forwards TCP connections to a target and counts the bytes that
// cross it in both directions: what "on the wire" means in the tests and
// the benchmark. With a rate, it also limits the link, like a slow uplink.
// It counts the connections it accepts, and can cut the live ones, at once
// or after a number of bytes, as a broken link would, or silence them: a
// black hole that keeps both sockets open and forwards nothing more, as a
// link whose route died does. Connections made afterwards go through.
type Proxy struct {
	Addr  string
	bytes atomic.Int64
	conns atomic.Int64
	l     net.Listener
	rate  int64 // bytes per second in each direction; 0 = unlimited

	mu     sync.Mutex
	live   map[*link]bool
	budget int64 // bytes that may still cross before every link is cut; -1 = no cut armed
	silent bool  // what the armed budget does: silence the links instead of cutting them

}

// link is one proxied connection: the client's side and the target's.
type link struct {
	c, u   *net.TCPConn
	silent atomic.Bool // black-holed: bytes read from either side are dropped
	doomed bool        // an armed cut or silence fired: nothing more crosses (Proxy.mu)
	gone   chan struct{}
	once   sync.Once
}

// closeWrite passes an end's close on to the other end, unless the link
// is silenced: then not even that crosses, and the other end's socket
// stays open until the link is cut.
func (l *link) closeWrite(c *net.TCPConn) {
	if l.silent.Load() {
		<-l.gone
		return
	}
	c.CloseWrite()
}

// StartProxy listens on 127.0.0.1 and forwards to target. bitsPerSecond 0
// means no limit.
func StartProxy(t testing.TB, target string, bitsPerSecond int64) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), l: l, rate: bitsPerSecond / 8, live: map[*link]bool{}, budget: -1}
	go p.serve(target)
	t.Cleanup(func() { l.Close(); p.Cut() })
	return p
}

// Bytes is the total that crossed the proxy so far, both directions.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

// Reset sets the byte count back to zero (not the connection count).
func (p *Proxy) Reset() { p.bytes.Store(0) }

// Conns is how many connections the proxy has accepted since it started.
func (p *Proxy) Conns() int { return int(p.conns.Load()) }

// Cut resets every live connection, on both sides, as a link that breaks
// does; connections made afterwards go through again.
func (p *Proxy) Cut() {
	p.mu.Lock()
	links := p.live
	p.live = map[*link]bool{}
	p.budget = -1
	p.mu.Unlock()
	for l := range links {
		l.cut()
	}
}

// CutAfter arms a cut: once n more bytes have crossed (either direction,
// any connection), the rest of that read is dropped and every live
// connection is cut. It fires once.
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	p.budget, p.silent = n, false
	p.mu.Unlock()
}

// Silence black-holes every live connection: from now on nothing crosses
// in either direction, but both sockets stay open, so neither end sees an
// error; only a timeout of its own can tell. Connections made afterwards
// go through again. Cut (or the test's end) closes the silenced ones.
func (p *Proxy) Silence() {
	p.mu.Lock()
	p.budget = -1
	links := make([]*link, 0, len(p.live))
	for l := range p.live {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.silent.Store(true)
	}
}

// SilenceAfter arms Silence: once n more bytes have crossed, the rest of
// that read is dropped and every live connection goes silent. It fires once.
func (p *Proxy) SilenceAfter(n int64) {
	p.mu.Lock()
	p.budget, p.silent = n, true
	p.mu.Unlock()
}

// Live is how many connections are open through the proxy now, silenced
// ones included.
func (p *Proxy) Live() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live)
}

// take is how many of n bytes may cross, whether the armed budget fires
// now, and whether it silences (else cuts).
func (p *Proxy) take(l *link, n int) (int, bool, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l.doomed {
		return 0, false, false
	}
	if p.budget < 0 {
		return n, false, false
	}
	if int64(n) < p.budget {
		p.budget -= int64(n)
		return n, false, false
	}
	k := int(p.budget)
	p.budget = -1
	// Until the cut (or silence) reaches them, the links live now pass
	// nothing more: the other direction would slip bytes through.
	for x := range p.live {
		x.doomed = true
	}
	return k, true, p.silent
}

// cut closes both sides with a reset (SO_LINGER 0), not a clean FIN: the
// programs at either end see an error, not an orderly end of stream.
func (l *link) cut() {
	l.once.Do(func() { close(l.gone) })
	for _, c := range []*net.TCPConn{l.c, l.u} {
		_ = c.SetLinger(0)
		_ = c.Close()
	}
}

func (p *Proxy) serve(target string) {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			l := &link{c: c.(*net.TCPConn), u: u.(*net.TCPConn), gone: make(chan struct{})}
			p.mu.Lock()
			p.live[l] = true
			p.mu.Unlock()
			defer func() {
				p.mu.Lock()
				delete(p.live, l)
				p.mu.Unlock()
			}()
			done := make(chan struct{}, 2)
			go func() { p.copy(l, l.u, l.c); l.closeWrite(l.u); done <- struct{}{} }()
			go func() { p.copy(l, l.c, l.u); l.closeWrite(l.c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

// copy moves bytes, counting them, and paces them to the rate with a
// token bucket refilled every 10 ms. On a silenced link it reads on and
// drops everything, until an end closes or the link is cut.
func (p *Proxy) copy(l *link, dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	start := time.Now()
	var sent int64
	for {
		n, err := src.Read(buf)
		if n > 0 && l.silent.Load() {
			n = 0
		}
		if n > 0 {
			n, fire, silence := p.take(l, n)
			cut := fire && !silence
			if p.rate > 0 {
				sent += int64(n)
				if time.Since(start.Add(time.Duration(float64(sent-int64(n))/float64(p.rate)*float64(time.Second)))) > 50*time.Millisecond {
					start, sent = time.Now(), int64(n) // the link was idle: no burst of saved-up credit
				}
				due := start.Add(time.Duration(float64(sent) / float64(p.rate) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
			}
			p.bytes.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if cut {
				p.Cut()
				return
			}
			if fire && silence {
				p.Silence()
			}
		}
		if err != nil {
			return
		}
	}
}
