package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/joho/godotenv"
)

// ParseError reports a .env line that godotenv cannot parse.
type ParseError struct {
	File string // file name as shown in the message, e.g. ".env"
	Line int    // 1-based line where the bad statement starts
	Text string // that line, trimmed and shortened; redacted when it names a secret
	Msg  string // what is expected, e.g. "expected KEY=VALUE"
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: cannot parse %q: %s", e.File, e.Line, e.Text, e.Msg)
}

// validKey is the set of names accepted in .env. godotenv itself lets
// through names like "FOO BAR" (from "FOO BAR=1") or "" (from "=1"), which
// cannot be passed on as environment variables.
var validKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// dotenv is a parsed .env file.
type dotenv struct {
	values     map[string]string // with godotenv's ${VAR} expansion
	lineOf     map[string]int    // the 1-based line of the statement that (last) set each key
	statements []statement       // every line is in one; a comment or blank line sets nothing
}

// statement is a run of lines that godotenv parses on its own.
type statement struct {
	text string   // the lines as written, each ending in a newline
	keys []string // the keys it sets
}

// readDotenv reads path with godotenv. A missing file gives an error
// matching fs.ErrNotExist.
func readDotenv(path string) (dotenv, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return dotenv{}, err
	}
	return parseDotenv(filepath.Base(path), data)
}

// parseDotenv parses data as godotenv does, but statement by statement so
// that a failure can be pinned to a line (godotenv's own errors carry no
// line number and quote the rest of the file, secrets included, so they
// are never shown).
//
// A statement is the shortest run of whole lines, starting at the current
// line, that godotenv parses on its own: one line, or several when a quoted
// value spans lines. Parsing the file piece by piece is equivalent to parsing
// it whole because godotenv's parser only carries the values read so far
// from one statement to the next (for ${VAR} expansion), which does not
// affect where statements end. If no run starting at a line parses, that
// line is the error.
func parseDotenv(name string, data []byte) (dotenv, error) {
	text := strings.TrimPrefix(string(data), "\ufeff")
	text = strings.ReplaceAll(text, "\r\n", "\n")
	lines := strings.Split(text, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1] // the file ended with a newline
	}

	d := dotenv{lineOf: map[string]int{}}
	for start := 0; start < len(lines); {
		end, keys, msg := parseStatement(lines, start)
		if msg != "" {
			return dotenv{}, &ParseError{File: name, Line: start + 1, Text: redactLine(lines[start]), Msg: msg}
		}
		for _, k := range keys {
			d.lineOf[k] = start + 1
		}
		d.statements = append(d.statements, statement{text: joinLines(lines[start:end]), keys: keys})
		start = end
	}

	// Every statement parsed, so the whole file does too; parse it whole
	// to get the values with godotenv's ${VAR} expansion across lines.
	values, err := godotenv.Unmarshal(joinLines(lines))
	if err != nil { // unreachable, see above; never show err (it may hold secrets)
		return dotenv{}, fmt.Errorf("%s: cannot parse the file (godotenv disagrees with the line-by-line parse)", name)
	}
	d.values = values
	return d, nil
}

// only is the statements that set keys of owner alone, as written, without
// comments: a line that sets a key of another owner, or none, is left out.
func (d dotenv) only(owner Owner, except ...string) []byte {
	var b strings.Builder
	for _, st := range d.statements {
		if len(st.keys) == 0 {
			continue
		}
		ours := true
		for _, k := range st.keys {
			ours = ours && Classify(k).Owner == owner && !slices.Contains(except, k)
		}
		if ours {
			b.WriteString(st.text)
		}
	}
	return []byte(b.String())
}

// parseStatement finds the statement starting at lines[start] and returns
// the index of the line after it and the keys it sets, or a non-empty
// message saying what is wrong with it.
func parseStatement(lines []string, start int) (end int, keys []string, msg string) {
	msg = "expected KEY=VALUE"
	for end = start + 1; end <= len(lines); end++ {
		if end > start+1 && !strings.ContainsAny(lines[end-1], `"'`) {
			continue // no quote on the new line: the open quote stays open
		}
		m, err := godotenv.Unmarshal(joinLines(lines[start:end]))
		if err != nil {
			// Only an open quote can be fixed by more lines: names never
			// span lines, and once a quote is closed the lines after it
			// cannot change what went before.
			if !strings.HasPrefix(err.Error(), "unterminated quoted value") {
				break
			}
			if end == start+1 {
				msg = "unterminated quoted value (add the closing quote)"
			}
			continue // maybe a quoted value that goes on over the next lines
		}
		for k := range m {
			if !validKey.MatchString(k) {
				return 0, nil, "expected KEY=VALUE with KEY made of letters, digits and _"
			}
			keys = append(keys, k)
		}
		return end, keys, ""
	}
	return 0, nil, msg
}

func joinLines(lines []string) string {
	return strings.Join(lines, "\n") + "\n"
}

// redactLine prepares a .env line for an error message: trimmed, shortened,
// cut after the name when it mentions a secret-looking name, and with the
// password of any URL in it hidden.
func redactLine(line string) string {
	line = strings.TrimSpace(line)
	if secretName(line) {
		rest := strings.TrimPrefix(line, "export ")
		i := strings.IndexFunc(rest, func(r rune) bool { return !isNameRune(r) })
		if i < 0 {
			i = len(rest)
		}
		name, sep := rest[:i], " "
		if after := strings.TrimLeft(rest[i:], " \t"); after != "" && (after[0] == '=' || after[0] == ':') {
			sep = after[:1]
		}
		return line[:len(line)-len(rest)] + name + sep + redacted
	}
	line = redactURLPasswords(line) // before shortening, which could cut off the "@" that marks a password
	const maxLen = 80
	if r := []rune(line); len(r) > maxLen {
		return string(r[:maxLen-3]) + "..."
	}
	return line
}
