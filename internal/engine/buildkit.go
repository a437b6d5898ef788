package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/pkg/jsonmessage"
	controlapi "github.com/moby/buildkit/api/services/control"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"github.com/moby/buildkit/util/progress/progressui"
	digest "github.com/opencontainers/go-digest"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
)

// errNoBuildKit marks a build the engine refused to start with BuildKit (the
// request or its session), as opposed to one BuildKit ran and that failed.
// Only the first falls back to the classic builder.
type errNoBuildKit struct{ err error }

func (e *errNoBuildKit) Error() string { return e.err.Error() }
func (e *errNoBuildKit) Unwrap() error { return e.err }

// buildKit builds through the engine's BuildKit, as `docker build` does: the
// context and the Dockerfile's folder are served to the builder over a
// session (only the files a step asks for cross, with excludes applied
// here), secrets and the ssh-agent are served on request and never written
// anywhere, and the progress stream is drawn by buildkit's own display.
func (e *Engine) buildKit(parent context.Context, o BuildOptions, excludes []string) (string, error) {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)

	s, err := e.buildSession(ctx, o, excludes)
	if err != nil {
		return "", err
	}
	defer s.Close()
	st := newBuildStream(o)
	go func() {
		err := s.Run(ctx, func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
			return e.api.DialHijack(ctx, "/session", proto, meta)
		})
		// A session that could not start is an engine without BuildKit's
		// session endpoint: the build would wait for it, so it stops here.
		if err != nil && !st.started.Load() {
			cancel(&errNoBuildKit{fmt.Errorf("build session: %w", err)})
		}
	}()

	resp, err := e.api.ImageBuild(ctx, nil, build.ImageBuildOptions{
		Version: build.BuilderBuildKit, SessionID: s.ID(), RemoteContext: "client-session",
		Dockerfile: filepath.Base(o.Dockerfile), Target: o.Target,
		Tags: o.Tags, Labels: o.Labels, BuildArgs: argPointers(o.Args), NoCache: o.NoCache,
		Remove: true, ForceRemove: true,
	})
	if err == nil {
		defer resp.Body.Close()
		var id string
		if id, err = st.read(ctx, resp.Body); err == nil {
			return id, nil
		}
	}
	var no *errNoBuildKit
	switch {
	case parent.Err() != nil:
		return "", parent.Err()
	case resp.Body == nil && refusesBuildKit(err):
		return "", &errNoBuildKit{err}
	case errors.As(context.Cause(ctx), &no):
		return "", no
	}
	return "", err
}

// refusesBuildKit tells an engine's refusal of a BuildKit build (a Windows
// engine, one built without it, an API too old for it) from a refusal of
// this build.
func refusesBuildKit(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, s := range []string{"buildkit", "session", "builder version", "not implemented", "not supported"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// buildSession serves the context (filtered by excludes), the Dockerfile's
// folder, the secrets and, when there is one, the ssh-agent.
func (e *Engine) buildSession(ctx context.Context, o BuildOptions, excludes []string) (*session.Session, error) {
	s, err := session.NewSession(ctx, sharedKey(o.ContextDir))
	if err != nil {
		return nil, fmt.Errorf("build session: %w", err)
	}
	contextFS, err := fsutil.NewFS(o.ContextDir)
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", o.ContextDir, err)
	}
	dockerfileFS, err := fsutil.NewFS(filepath.Dir(o.Dockerfile))
	if err != nil {
		return nil, fmt.Errorf("DOCKERFILE folder: %w", err)
	}
	// The frontend sends the excludes it read from the context's
	// .dockerignore; the ones worked out here (which also know the
	// Dockerfile's own <Dockerfile>.dockerignore, which old engines'
	// frontends do not) replace them, so every engine sends the same files.
	filter := func(name string, fo *fsutil.FilterOpt) error {
		if name == "context" {
			fo.ExcludePatterns = excludes
		}
		return nil
	}
	s.Allow(filesync.NewFSSyncProvider(filesync.StaticDirSource{"context": contextFS, "dockerfile": dockerfileFS}, filter))
	s.Allow(secretsprovider.FromMap(o.Secrets))
	if o.SSH {
		var paths []string
		if o.SSHAgent != "" {
			paths = []string{o.SSHAgent}
		}
		agent, err := sshprovider.NewSSHAgentProvider([]sshprovider.AgentConfig{{ID: "default", Paths: paths}})
		if err != nil {
			return nil, fmt.Errorf("ssh-agent for RUN --mount=type=ssh (SSH_AUTH_SOCK=%s): %w", o.SSHAgent, err)
		}
		s.Allow(agent)
	}
	return s, nil
}

// sharedKey names this machine's context folder to BuildKit, which keeps a
// copy of each key's files and sends only what changed next time: one key
// for every project would send a whole context each time another project
// built in between. As the docker CLI does: this machine and the folder.
func sharedKey(dir string) string {
	host, _ := os.Hostname()
	sum := sha256.Sum256([]byte(host + ":" + dir))
	return hex.EncodeToString(sum[:])
}

func argPointers(args map[string]string) map[string]*string {
	p := make(map[string]*string, len(args))
	for k, v := range args {
		p[k] = &v
	}
	return p
}

// buildStream turns the engine's JSON stream of a BuildKit build into
// buildkit's progress display and keeps what an error needs: every step's
// name and its whole output (the display keeps only the last lines).
type buildStream struct {
	o       BuildOptions
	out     io.Writer     // where the display draws
	kept    *bytes.Buffer // a quiet build's output, shown when it fails
	mode    progressui.DisplayMode
	started atomic.Bool // a status arrived: the session worked

	names  map[string]string // vertex digest → its name, "[2/3] RUN make"
	logs   map[string]*bytes.Buffer
	held   map[string][]byte // a chunk's end that may begin a secret
	failed string            // the first vertex that failed
}

func newBuildStream(o BuildOptions) *buildStream {
	st := &buildStream{o: o, out: o.Out, mode: progressui.PlainMode,
		names: map[string]string{}, logs: map[string]*bytes.Buffer{}, held: map[string][]byte{}}
	if st.out == nil {
		st.out = io.Discard
	}
	if _, term := terminal(st.out); term && !o.Plain && !o.Quiet {
		st.mode = progressui.TtyMode
	}
	if o.Quiet {
		st.kept = &bytes.Buffer{}
		st.out = st.kept
	}
	return st
}

// read consumes the stream until the image ID or the build's error.
func (st *buildStream) read(ctx context.Context, body io.Reader) (string, error) {
	display, err := progressui.NewDisplay(st.out, st.mode)
	if err != nil {
		return "", fmt.Errorf("build progress: %w", err)
	}
	ch := make(chan *bkclient.SolveStatus)
	var g errgroup.Group
	g.Go(func() error {
		// The display's own context is not the build's: after Ctrl-C it
		// still draws what the stream said until the stream ends.
		_, err := display.UpdateFrom(context.WithoutCancel(ctx), ch)
		return err
	})

	var id string
	var buildErr error
	dec := json.NewDecoder(body)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if !errors.Is(err, io.EOF) && buildErr == nil {
				buildErr = fmt.Errorf("build: reading the engine's answer: %w", err)
				if ctx.Err() != nil {
					buildErr = ctx.Err()
				}
			}
			break
		}
		switch {
		case m.Error != nil:
			buildErr = errors.New(m.Error.Message)
		case m.ID == "moby.buildkit.trace" && m.Aux != nil:
			if ss := st.status(*m.Aux); ss != nil {
				ch <- ss
			}
		case m.ID == "moby.image.id" && m.Aux != nil:
			var r struct{ ID string }
			if json.Unmarshal(*m.Aux, &r) == nil {
				id = r.ID
			}
		}
	}
	if ss := st.flush(); ss != nil {
		ch <- ss
	}
	close(ch)
	_ = g.Wait() // the display's error is the build's, reported below

	if buildErr != nil {
		return "", st.failure(buildErr)
	}
	if id == "" {
		return "", errors.New("build: the engine reported no image ID")
	}
	return id, nil
}

// status decodes one trace message, keeps names and output, and hides
// secret values in the output before anything shows it.
func (st *buildStream) status(aux json.RawMessage) *bkclient.SolveStatus {
	var dt []byte
	if err := json.Unmarshal(aux, &dt); err != nil {
		return nil
	}
	var resp controlapi.StatusResponse
	if err := resp.UnmarshalVT(dt); err != nil {
		return nil
	}
	st.started.Store(true)
	ss := bkclient.NewSolveStatus(&resp)
	for _, v := range ss.Vertexes {
		d := v.Digest.String()
		st.names[d] = v.Name
		if v.Error != "" && st.failed == "" && !strings.HasSuffix(v.Error, context.Canceled.Error()) {
			st.failed = d
		}
	}
	for _, l := range ss.Logs {
		d := l.Vertex.String()
		// A value split across two chunks is joined before it is hidden:
		// the end of a chunk that may start a secret waits for the next.
		data := redactValues(append(st.held[d], l.Data...), st.o.Secrets)
		delete(st.held, d)
		if n := partialSecret(data, st.o.Secrets); n > 0 {
			st.held[d] = bytes.Clone(data[len(data)-n:])
			data = data[:len(data)-n]
		}
		l.Data = data
		if st.logs[d] == nil {
			st.logs[d] = &bytes.Buffer{}
		}
		st.logs[d].Write(l.Data)
	}
	return ss
}

// flush is what is still held back once the stream has ended: no secret.
func (st *buildStream) flush() *bkclient.SolveStatus {
	if len(st.held) == 0 {
		return nil
	}
	ss := &bkclient.SolveStatus{}
	for d, b := range st.held {
		ss.Logs = append(ss.Logs, &bkclient.VertexLog{Vertex: digest.Digest(d), Data: b, Timestamp: time.Now()})
		st.logs[d].Write(b)
	}
	clear(st.held)
	return ss
}

// failure names the step that failed and makes sure its whole output was
// seen: a quiet build's kept output is written out, and the terminal display,
// which shows only a failed step's last lines, is followed by all of them.
func (st *buildStream) failure(err error) error {
	msg := string(redactValues([]byte(err.Error()), st.o.Secrets))
	if st.o.Quiet && st.o.Out != nil {
		_, _ = io.Copy(st.o.Out, st.kept)
	}
	if st.failed == "" {
		return fmt.Errorf("build failed: %s", msg)
	}
	name := st.names[st.failed]
	if log := st.logs[st.failed]; st.mode == progressui.TtyMode && log != nil && log.Len() > 0 {
		fmt.Fprintf(st.o.Out, "------ all the output of %s:\n%s", name, log.Bytes())
		if !bytes.HasSuffix(log.Bytes(), []byte("\n")) {
			fmt.Fprintln(st.o.Out)
		}
		fmt.Fprintln(st.o.Out, "------")
	}
	return fmt.Errorf("build failed at %s: %s", name, msg)
}

// redactValues replaces every secret value in b by "****".
func redactValues(b []byte, secrets map[string][]byte) []byte {
	for _, v := range secrets {
		if len(v) > 0 && bytes.Contains(b, v) {
			b = bytes.ReplaceAll(b, v, []byte("****"))
		}
	}
	return b
}

// partialSecret is the length of the longest end of b that is the start
// of a secret value (but not all of it: whole ones are hidden already).
func partialSecret(b []byte, secrets map[string][]byte) int {
	n := 0
	for _, v := range secrets {
		for k := min(len(v)-1, len(b)); k > n; k-- {
			if bytes.HasSuffix(b, v[:k]) {
				n = k
				break
			}
		}
	}
	return n
}

// syntaxLine is the Dockerfile's "# syntax=" directive, if it has one.
func syntaxLine(dockerfile string) string {
	dt, err := os.ReadFile(dockerfile)
	if err != nil {
		return ""
	}
	ref, _, _, ok := parser.DetectSyntax(dt)
	if !ok {
		return ""
	}
	return ref
}
