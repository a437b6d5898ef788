package fleet

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/host"
)

// named is a host that only has a name: enough for the order of locks.
type named struct {
	host.Host
	name string
}

func (n named) String() string { return n.name }

func hosts(names ...string) []*deploy.Deployer {
	var ds []*deploy.Deployer
	for _, n := range names {
		ds = append(ds, &deploy.Deployer{Host: named{name: n}})
	}
	return ds
}

func TestSortedIsTheLockOrder(t *testing.T) {
	f := Fleet{Hosts: hosts("ubuntu@10.0.0.6:22", "ubuntu@10.0.0.5:2222", "admin@10.0.0.7:22")}
	var got []string
	for _, d := range f.Sorted() {
		got = append(got, d.Host.String())
	}
	if strings.Join(got, " ") != "admin@10.0.0.7:22 ubuntu@10.0.0.5:2222 ubuntu@10.0.0.6:22" {
		t.Errorf("order %v", got)
	}
	if f.Hosts[0].Host.String() != "ubuntu@10.0.0.6:22" {
		t.Error("Sorted reordered the fleet's own list")
	}
}

// Each runs the steps at once and keeps every host's error.
func TestEachRunsAtOnce(t *testing.T) {
	ds := hosts("a", "b", "c")
	var running, most atomic.Int32
	err := Each(ds, func(d *deploy.Deployer) error {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		running.Add(-1)
		if d.Host.String() != "b" {
			return errors.New(d.Host.String() + ": unreachable")
		}
		return nil
	})
	if most.Load() != 3 {
		t.Errorf("at most %d steps ran at once, want 3", most.Load())
	}
	if err == nil || !strings.Contains(err.Error(), "a: unreachable") || !strings.Contains(err.Error(), "c: unreachable") {
		t.Errorf("err = %v", err)
	}
}
