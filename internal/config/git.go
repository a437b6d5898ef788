package config

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/carebot/carebot/internal/text"
)

// runGit runs git in dir and returns its trimmed output. Its error is one
// line: git's first line of stderr, or why git could not be run.
func runGit(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && strings.TrimSpace(stderr.String()) != "" {
			return "", fmt.Errorf("git %s: %s", args[0], text.FirstLine(stderr.String()))
		}
		return "", fmt.Errorf("git %s: %s", args[0], text.FirstLine(err.Error()))
	}
	return strings.TrimSpace(string(out)), nil
}
