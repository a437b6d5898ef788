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
type Proxy struct {
	Addr  string
	bytes atomic.Int64
	l     net.Listener
	rate  int64 // bytes per second in each direction; 0 = unlimited
	wg    sync.WaitGroup
}

// StartProxy listens on 127.0.0.1 and forwards to target. bitsPerSecond 0
// means no limit.
func StartProxy(t testing.TB, target string, bitsPerSecond int64) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: l.Addr().String(), l: l, rate: bitsPerSecond / 8}
	go p.serve(target)
	t.Cleanup(func() { l.Close() })
	return p
}

// Bytes is the total that crossed the proxy so far, both directions.
func (p *Proxy) Bytes() int64 { return p.bytes.Load() }

// Reset sets the count back to zero.
func (p *Proxy) Reset() { p.bytes.Store(0) }

func (p *Proxy) serve(target string) {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{}, 2)
			go func() { p.copy(u, c); u.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { p.copy(c, u); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

// copy moves bytes, counting them, and paces them to the rate with a
// token bucket refilled every 10 ms.
func (p *Proxy) copy(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	start := time.Now()
	var sent int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
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
		}
		if err != nil {
			return
		}
	}
}
