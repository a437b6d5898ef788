// Package shell quotes words for a POSIX shell. Every command line this tool
// runs on a host (locally, over SSH, inside WSL) is built with it, so a path
// with spaces or quotes is one word everywhere.
package shell

import "strings"

// Quote makes s one word for a POSIX shell, whatever it holds.
func Quote(s string) string {
	if s != "" && strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func unsafeRune(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return false
	}
	return !strings.ContainsRune("@%+=:,./_-", r)
}

// Join quotes each argument and joins them into one command line.
func Join(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}
