package transfer

import (
	"bufio"
	"io"
	"os"
	"sync"
)

// The archive is written by one goroutine, the sender, while the save is
// read and the next layer is spooled (and compressed) by the caller's: a
// layer held in a local file is handed over with queue, and goes to the
// archive while the next one is prepared. Anything written straight from
// the read goroutine (a layer streamed from the save, the filler, the
// manifests) first waits for the sender with drain. One file waits in the
// queue at most, so at most two layers are on local disk at a time.

type job struct {
	name    string
	size    int64
	f       *os.File   // removed once sent
	blob    Blob       // what f holds, for a Stager
	barrier chan error // or, a drain: gets the first error so far
}

type sender struct {
	jobs chan job
	done chan struct{}
	mu   sync.Mutex
	err  error
}

func (x *rewriter) startSender() {
	s := &sender{jobs: make(chan job, 1), done: make(chan struct{})}
	x.snd = s
	go func() {
		defer close(s.done)
		for j := range s.jobs {
			if j.barrier != nil {
				j.barrier <- s.failed()
				continue
			}
			if s.failed() == nil {
				var err error
				if x.o.Stage != nil {
					err = x.put(j.blob, j.f) // stage.go
				} else {
					err = x.fileFrom(j.name, j.size, j.f)
				}
				if err != nil {
					s.mu.Lock()
					s.err = err
					s.mu.Unlock()
				}
			}
			j.f.Close()
			os.Remove(j.f.Name())
		}
	}()
}

func (s *sender) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// fileFrom writes a spooled file to the archive from its start.
func (x *rewriter) fileFrom(name string, size int64, f *os.File) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return x.file(name, size, bufio.NewReaderSize(f, 256<<10))
}

// queue hands a spooled file to the sender, which removes it once sent.
func (x *rewriter) queue(name string, size int64, f *os.File, b Blob) error {
	if err := x.snd.failed(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	x.snd.jobs <- job{name: name, size: size, f: f, blob: b}
	return nil
}

// drain waits until the sender has written everything queued.
func (x *rewriter) drain() error {
	b := make(chan error, 1)
	x.snd.jobs <- job{barrier: b}
	return <-b
}

// stopSender ends the sender and removes any file left: after what is
// queued, or, after an error (abort), after the file it is writing.
func (x *rewriter) stopSender(abort error) error {
	if abort != nil {
		x.snd.mu.Lock()
		if x.snd.err == nil {
			x.snd.err = abort
		}
		x.snd.mu.Unlock()
	}
	close(x.snd.jobs)
	<-x.snd.done
	return x.snd.failed()
}

// drop removes a spooled file that is not to be sent.
func drop(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}
