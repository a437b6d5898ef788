package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// Entry is one line of the deploy history (DEPLOY_PATH/deploy-history.jsonl).
type Entry struct {
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // deploy | rollback
	Version  string    `json:"version"`
	ImageID  string    `json:"image_id,omitempty"`
	Commit   string    `json:"commit,omitempty"`
	Result   string    `json:"result"`            // ok | rolled-back | failed
	Serving  string    `json:"serving,omitempty"` // the version serving once this entry ended
	Previous string    `json:"previous,omitempty"`
	Error    string    `json:"error,omitempty"`
	Backup   string    `json:"backup,omitempty"` // the data backup taken before it
	Run      string    `json:"run,omitempty"`    // the run that deployed it to several hosts together
	Tag      string    `json:"tag,omitempty"`    // the image tag it ran under, when not Version (a swarm pins one per build)
}

// Results of an entry.
const (
	ResultOK         = "ok"
	ResultRolledBack = "rolled-back" // the release failed; the previous one serves again
	ResultFailed     = "failed"      // the release failed and nothing known-good serves
)

func (e Entry) String() string {
	s := fmt.Sprintf("%s  %-8s %-20s %-11s", e.Time.Local().Format("2006-01-02 15:04:05"), e.Action, e.Version, e.Result)
	if e.Serving != "" && e.Serving != e.Version {
		s += " serving " + e.Serving
	}
	if e.Backup != "" {
		s += "  backup " + e.Backup
	}
	if e.Error != "" {
		s += "  (" + e.Error + ")"
	}
	return s
}

// ParseHistory reads history lines; a line it cannot read is skipped, so a
// hand-edited or truncated file never blocks a deploy.
func ParseHistory(data []byte) []Entry {
	var out []Entry
	for _, line := range bytes.Split(data, []byte("\n")) {
		var e Entry
		if json.Unmarshal(line, &e) == nil && e.Version != "" {
			out = append(out, e)
		}
	}
	return out
}

// Previous is the rollback target: the newest version that served
// successfully before current, or "" when there is none.
func Previous(history []Entry, current string) string {
	for i := len(history) - 1; i >= 0; i-- {
		e := history[i]
		if e.Result == ResultOK && e.Version != current {
			return e.Version
		}
		if e.Result == ResultRolledBack && e.Serving != "" && e.Serving != current {
			return e.Serving
		}
	}
	return ""
}

// ImageOf is the image ID history recorded for version, "" when unknown.
func ImageOf(history []Entry, version string) string {
	for i := len(history) - 1; i >= 0; i-- {
		if history[i].Version == version && history[i].ImageID != "" {
			return history[i].ImageID
		}
	}
	return ""
}

func (d *Deployer) historyPath() string { return d.Path + "/deploy-history.jsonl" }

// History reads the host's deploy history, oldest first.
func (d *Deployer) History(ctx context.Context) ([]Entry, error) {
	data, _, err := host.ReadFile(ctx, d.Host, d.historyPath())
	if err != nil {
		return nil, fmt.Errorf("read deploy history: %w", err)
	}
	return ParseHistory(data), nil
}

// appendHistoryCmd is the command that adds e to the history.
func (d *Deployer) appendHistoryCmd(e Entry) string {
	line, _ := json.Marshal(e) // an Entry is plain strings and a time
	return fmt.Sprintf("printf '%%s\\n' %s >> %s", shell.Quote(string(line)), shell.Quote(d.historyPath()))
}

// Confirmed is the version the history last recorded as serving healthy,
// "" when none.
func Confirmed(history []Entry) string {
	for i := len(history) - 1; i >= 0; i-- {
		if e := history[i]; e.Serving != "" && (e.Result == ResultOK || e.Result == ResultRolledBack) {
			return e.Serving
		}
	}
	return ""
}
