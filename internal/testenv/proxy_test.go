package testenv

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer answers every connection with what it reads.
func echoServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return l.Addr().String()
}

func dialProxy(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func echo(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the proxy: %q, %v", got, err)
	}
}

// readErr waits for c to fail, as a program at the end of a cut link does.
func readErr(t *testing.T, c net.Conn) (int, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the connection was not cut")
	}
	return int(n), err
}

func TestProxyCountsAndCuts(t *testing.T) {
	p := StartProxy(t, echoServer(t), 0)

	a, b := dialProxy(t, p), dialProxy(t, p)
	echo(t, a, []byte("hello"))
	echo(t, b, []byte("again"))
	if p.Conns() != 2 {
		t.Errorf("Conns = %d after two connections, want 2", p.Conns())
	}
	if p.Bytes() != 20 {
		t.Errorf("Bytes = %d after two 5-byte echoes, want 20", p.Bytes())
	}

	p.Cut()
	for _, c := range []net.Conn{a, b} {
		if _, err := readErr(t, c); err == nil {
			t.Error("a cut connection ended cleanly, want a reset")
		}
	}

	// Cut after 100 bytes: the 1000 sent are stopped on the way, in the
	// middle of the first read, and the link is reset.
	c := dialProxy(t, p)
	echo(t, c, []byte("before"))
	p.Reset()
	p.CutAfter(100)
	c.Write(make([]byte, 1000))
	n, err := readErr(t, c)
	if err == nil {
		t.Error("the connection cut after 100 bytes ended cleanly")
	}
	if n > 100 || p.Bytes() != 100 {
		t.Errorf("%d bytes came back and %d crossed, want at most 100 and exactly 100", n, p.Bytes())
	}

	// The cut fired once: a new connection goes through.
	echo(t, dialProxy(t, p), []byte("after"))
	if p.Conns() != 4 {
		t.Errorf("Conns = %d, want 4", p.Conns())
	}
}

func TestProxySilences(t *testing.T) {
	p := StartProxy(t, echoServer(t), 0)
	a := dialProxy(t, p)
	echo(t, a, []byte("hello"))

	// Silenced: what is sent vanishes, and the socket neither answers nor fails.
	p.Silence()
	a.Write([]byte("into the void"))
	a.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := a.Read(make([]byte, 64))
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("a silenced connection answered %d bytes, %v; want nothing until the deadline", n, err)
	}
	if p.Live() != 1 {
		t.Errorf("Live = %d after silencing, want the connection still open", p.Live())
	}
	// A new connection goes through.
	echo(t, dialProxy(t, p), []byte("fresh"))
	// Closing a silenced end is not passed on either.
	a.Close()
	time.Sleep(100 * time.Millisecond)
	if p.Live() != 2 {
		t.Errorf("Live = %d after a silenced client closed, want its link kept open", p.Live())
	}

	// Silence after 100 bytes: the echo stops mid-way, nothing fails.
	b := dialProxy(t, p)
	echo(t, b, []byte("before"))
	p.Reset()
	p.SilenceAfter(100)
	b.Write(make([]byte, 1000))
	b.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	got, err := io.Copy(io.Discard, b)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("the connection silenced after 100 bytes ended: %v", err)
	}
	if got > 100 || p.Bytes() != 100 {
		t.Errorf("%d bytes came back and %d crossed, want at most 100 and exactly 100", got, p.Bytes())
	}
	echo(t, dialProxy(t, p), []byte("after"))
}
