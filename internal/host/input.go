package host

import (
	"bytes"
	"context"
	"io"
)

// RunWithInput is Run with stdin: a step script reads its standard input
// to learn that the run that started it is gone (EOF).
func RunWithInput(ctx context.Context, h Host, cmd string, stdin io.Reader) (string, error) {
	var out, both bytes.Buffer
	w := Synced(io.MultiWriter(&out, &both), &both)
	err := h.Exec(ctx, cmd, stdin, w[0], w[1])
	if err != nil {
		return out.String(), &CommandError{Cmd: cmd, Output: both.String(), Err: err}
	}
	return out.String(), nil
}
