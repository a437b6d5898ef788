package host

import "strings"

// firstWord names the program a command line runs, for messages: the first
// word of its first simple command past shell keywords (if, then, while,
// !, {, ...), VAR=value assignments, redirections, wrappers (exec, env,
// command, nohup, sudo, time) and commands that only set the scene (cd,
// set, umask, trap, export, tests, the head of a for or case). A script of
// several lines is "script": which of its commands failed, its output says.
func firstWord(cmd string) string {
	cmd = strings.TrimSpace(cmd)
	if strings.Contains(cmd, "\n") {
		return "script"
	}
	fallback := ""
	for _, words := range simpleCommands(cmd) {
		w, ok := program(words)
		switch {
		case !ok:
		case w.quoted || !shellPrologues[w.text]:
			return w.text
		case fallback == "":
			fallback = w.text
		}
	}
	if fallback != "" {
		return fallback // only prologues: "cd /x", "[ -e f ]"
	}
	return "command"
}

// program is the word of a simple command that names what it runs.
func program(words []shellWord) (shellWord, bool) {
	for len(words) > 0 {
		w := words[0]
		words = words[1:]
		switch {
		case !w.quoted && shellKeywords[w.text], isAssignment(w):
		case !w.quoted && shellWrappers[w.text]:
			for len(words) > 0 && strings.HasPrefix(words[0].text, "-") {
				words = words[1:] // its options: sudo -n, command -p
			}
		case isRedirection(w):
			if len(words) > 0 && strings.TrimLeft(w.raw, "0123456789<>&|") == "" {
				words = words[1:] // "> file": the file, too
			}
		default:
			return w, true
		}
	}
	return shellWord{}, false
}

var (
	shellKeywords  = setOf("if", "then", "elif", "else", "fi", "while", "until", "do", "done", "esac", "!", "{", "}", "in")
	shellWrappers  = setOf("exec", "env", "command", "nohup", "sudo", "time")
	shellPrologues = setOf("cd", "set", "umask", "trap", "export", "unset", "readonly", "local", "[", "[[", "test", "for", "case", "select", ":")
)

func setOf(words ...string) map[string]bool {
	m := make(map[string]bool, len(words))
	for _, w := range words {
		m[w] = true
	}
	return m
}

// shellWord is a word of a command line: as written, and without its quotes.
type shellWord struct {
	raw, text string
	quoted    bool // some of it was quoted or escaped: never a keyword
}

func isAssignment(w shellWord) bool {
	name, _, ok := strings.Cut(w.raw, "=")
	return ok && name != "" && strings.IndexFunc(name, func(r rune) bool {
		return !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}) < 0 && (name[0] < '0' || name[0] > '9')
}

func isRedirection(w shellWord) bool {
	r := strings.TrimLeft(w.raw, "0123456789")
	return r != "" && (r[0] == '<' || r[0] == '>')
}

// simpleCommands splits a line of shell into its simple commands, at ; & |
// ( ) and newlines, each a list of words. It knows quotes, backslashes,
// $(...), backquotes and comments; it is for naming a command in a
// message, not for running one.
func simpleCommands(line string) [][]shellWord {
	var (
		cmds  [][]shellWord
		words []shellWord
		w     shellWord
		inW   bool
	)
	endWord := func() {
		if inW {
			words = append(words, w)
		}
		w, inW = shellWord{}, false
	}
	endCmd := func() {
		endWord()
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
		words = nil
	}
	add := func(raw, text string, quoted bool) {
		w.raw += raw
		w.text += text
		w.quoted = w.quoted || quoted
		inW = true
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line):
			add(line[i:i+2], line[i+1:i+2], true)
			i++
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				j = len(line) - i - 1
			}
			add(line[i:min(i+j+2, len(line))], line[i+1:i+1+j], true)
			i += j + 1
		case c == '"':
			j := i + 1
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' {
					j++
				}
				j++
			}
			end := min(j, len(line))
			add(line[i:min(j+1, len(line))], line[i+1:end], true)
			i = j
		case c == '$' && i+1 < len(line) && line[i+1] == '(', c == '`':
			j := closing(line, i)
			add(line[i:j], line[i:j], true)
			i = j - 1
		case c == '#' && !inW:
			i = len(line)
		case c == ' ' || c == '\t':
			endWord()
		case strings.IndexByte(";&|()\n", c) >= 0:
			if c == '&' && inW && strings.HasSuffix(w.raw, ">") {
				add("&", "&", false) // 2>&1
				continue
			}
			endCmd()
		default:
			add(line[i:i+1], line[i:i+1], false)
		}
	}
	endCmd()
	return cmds
}

// closing returns the index just past the $(...) or `...` that starts at i.
func closing(line string, i int) int {
	if line[i] == '`' {
		if j := strings.IndexByte(line[i+1:], '`'); j >= 0 {
			return i + j + 2
		}
		return len(line)
	}
	depth := 0
	for j := i + 1; j < len(line); j++ {
		switch line[j] {
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return j + 1
			}
		}
	}
	return len(line)
}
