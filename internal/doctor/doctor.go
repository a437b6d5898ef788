// Package doctor checks, in order, what the build and deploy need, and
// says for each problem what to do about it, one line per check:
//
//	ok    go            go1.26.8 (go.mod asks for 1.26.8)
//	warn  mage          not installed — fix: nothing needed: go run mage.go <target> works without it (or go install github.com/magefile/mage@v1.17.2)
//	FAIL  engine        no Docker engine answers at unix:///var/run/docker.sock (connection refused) — fix: start it (sudo service docker start, or dockerd &) or set DOCKER_HOST
//	skip  server engine needs ssh login
//
// Each check is a small function returning a Result; Run keeps going after
// a failure and marks as skipped the checks whose prerequisites failed.
package doctor

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/carebot/carebot/internal/text"
)

// Status is how a check came out.
type Status int

const (
	OK   Status = iota
	Warn        // works, but worth knowing or fixing
	Fail
	Skip // not run: a check it needs did not pass
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	case Fail:
		return "FAIL"
	}
	return "skip"
}

// Result is one check's outcome. Detail says what was found, Fix what to do
// (empty when there is nothing to do); each is one line.
type Result struct {
	Name   string
	Status Status
	Detail string
	Fix    string
}

// Line is r as Run prints it: status, name, detail, and the fix.
func (r Result) Line() string {
	s := fmt.Sprintf("%-4s  %-13s %s", r.Status, r.Name, text.FirstLine(r.Detail))
	if r.Fix != "" {
		s += " — fix: " + text.FirstLine(r.Fix)
	}
	return s
}

// Check is one step: Run is called only when every check named in Needs
// came out OK or Warn.
type Check struct {
	Name  string
	Needs []string
	Run   func(ctx context.Context) Result
}

// Timeout bounds each check, so one that hangs does not hold up the rest.
const Timeout = 30 * time.Second

// Run runs checks in order, writes each result to w as it comes, and
// returns them all.
func Run(ctx context.Context, w io.Writer, checks []Check) []Result {
	status := map[string]Status{}
	var results []Result
	for _, c := range checks {
		r := run(ctx, c, status)
		status[c.Name] = r.Status
		results = append(results, r)
		fmt.Fprintln(w, r.Line())
	}
	return results
}

func run(ctx context.Context, c Check, status map[string]Status) Result {
	for _, n := range c.Needs {
		if s, ok := status[n]; !ok || s == Fail || s == Skip {
			return Result{Name: c.Name, Status: Skip, Detail: "needs " + n}
		}
	}
	cctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	r := c.Run(cctx)
	if r.Name == "" {
		r.Name = c.Name
	}
	if r.Status == Fail && cctx.Err() != nil && ctx.Err() == nil {
		r.Detail += fmt.Sprintf(" (gave up after %s)", Timeout)
	}
	return r
}

// Failed counts the results that failed.
func Failed(results []Result) int {
	n := 0
	for _, r := range results {
		if r.Status == Fail {
			n++
		}
	}
	return n
}
