// Package transfer ships an image to a server as a `docker load` archive that
// holds only the layers the server lacks.
//
// Present says how many of the image's leading layers the server already has;
// Write rewrites a local `docker save` stream into an archive in one layout
// that `docker load` accepts on both image stores (classic, and containerd):
// the legacy manifest.json beside an OCI index.json, oci-layout and image
// manifest, with a raw layer named blobs/sha256/<diff ID> (or, streamed from
// a legacy save, layers/N.tar). Layers the server has are named by both
// manifests but left out of the archive; both stores then take them from what
// they already hold.
//
// The archive is compressed as a whole (gzip, zstd), or with Auto it is a
// plain tar in which each layer is sent raw or as a gzip/zstd blob, decided
// per layer from the link's and the compressor's rates measured while
// sending (see Auto). With a Stager (Options.Stage), each layer blob goes
// to it instead, for a transfer that can resume (see stage.go).
package transfer

// Present returns how many leading layers of an image (its diff IDs, base
// first) the server already has, given the layer lists (RootFS.Layers) of the
// server's images.
//
// A layer counts only together with everything below it: docker load finds a
// layer by its chain ID (the diff IDs from the base up to it), so a server
// image that shares a layer's diff ID on a different base does not have it.
func Present(layers []string, server [][]string) int {
	best := 0
	for _, chain := range server {
		n := 0
		for n < len(layers) && n < len(chain) && layers[n] == chain[n] {
			n++
		}
		best = max(best, n)
	}
	return best
}
