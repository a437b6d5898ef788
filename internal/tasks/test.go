package tasks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/health"
)

// Test container settings: the name the seed used, and a label that marks
// the container as ours, so Test never removes anything else.
const (
	TestContainer = "carebot_test"
	roleLabel     = "com.carebot.role"
)

// Test runs the built image as carebot_test on TEST_PORT with ./test-data as
// its data, waits for /health to report the version just built, and removes
// the container unless keep.
func (r *Runner) Test(ctx context.Context, keep bool) (err error) {
	c := r.Cfg
	e, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	if err := r.removeTestContainer(ctx, e); err != nil {
		return err
	}
	if err := portFree(c.TestPort); err != nil {
		return err
	}
	if err := os.MkdirAll(c.TestData, 0o755); err != nil {
		return fmt.Errorf("TEST_DATA: %w", err)
	}
	// The engine mounts paths of its own machine: for the engine in WSL,
	// C:\...\test-data is /mnt/c/.../test-data there.
	data, err := e.HostPath(c.TestData)
	if err != nil {
		return fmt.Errorf("TEST_DATA cannot be mounted by the engine in %s: %w", e.Host, err)
	}
	binds := []string{data + ":/app/data"}
	if st, err := os.Stat(c.Migrations); err == nil && st.IsDir() {
		m, err := e.HostPath(c.Migrations)
		if err != nil {
			return fmt.Errorf("MIGRATIONS cannot be mounted by the engine in %s: %w", e.Host, err)
		}
		binds = append(binds, m+":/app/CareBot/migrations:ro")
	}
	id, err := e.Run(ctx, engine.RunOptions{
		Name: TestContainer, Image: c.Image(), Env: r.testEnv(),
		Labels: map[string]string{roleLabel: "test"}, Binds: binds,
		Publish: engine.Publish{HostIP: "127.0.0.1", HostPort: c.TestPort, ContainerPort: c.AppPort},
	})
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			r.printf("kept %s on port %d (remove it with: docker rm -f %s)\n", TestContainer, c.TestPort, TestContainer)
			return
		}
		if rmErr := e.Remove(context.WithoutCancel(ctx), id); rmErr != nil && err == nil {
			err = rmErr
		}
	}()

	probe := health.Probe{URL: fmt.Sprintf("http://127.0.0.1:%d%s", c.TestPort, c.HealthPath)}
	r.printf("testing %s as %s: waiting up to %s for %s\n", c.Image(), TestContainer, c.HealthTimeout, probe.URL)
	st, err := probe.Until(ctx, health.Wait{
		Version: c.ImageTag, Timeout: c.HealthTimeout,
		Alive: func(ctx context.Context) error {
			ct, err := e.Container(ctx, id)
			if err == nil && !ct.Running {
				return fmt.Errorf("%s stopped: %s", TestContainer, ct)
			}
			return nil
		},
	})
	if err != nil {
		r.showContainer(context.WithoutCancel(ctx), e, id)
		return fmt.Errorf("test of %s failed: %w", c.Image(), err)
	}
	r.printf("test passed: %s reports %s (commit %s)\n", c.Image(), st.Version, st.Commit)
	return nil
}

// testEnv is the test container's environment: the app's keys of the
// project's .env (so the app sees its usual settings; none in CI), never
// the tool's settings or secrets (config.Classify), and APP_PORT, the port
// it listens on inside.
func (r *Runner) testEnv() []string {
	env := make([]string, 0, len(r.Cfg.AppEnv)+1)
	for k, v := range r.Cfg.AppEnv {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return append(env, "APP_PORT="+strconv.Itoa(r.Cfg.AppPort))
}

// removeTestContainer clears a test container left by an earlier run
// (-keep, or an interrupted one), but refuses to touch a container of that
// name that this tool did not make.
func (r *Runner) removeTestContainer(ctx context.Context, e *engine.Engine) error {
	ct, err := e.Container(ctx, TestContainer)
	if errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if ct.Labels[roleLabel] != "test" {
		return fmt.Errorf("a container named %s exists that this tool did not start: rename or remove it (docker rm -f %s)", TestContainer, TestContainer)
	}
	return e.Remove(ctx, ct.ID)
}

func (r *Runner) showContainer(ctx context.Context, e *engine.Engine, id string) {
	if ct, err := e.Container(ctx, id); err == nil {
		r.printf("%s: %s\n", TestContainer, ct)
	}
	if logs, err := e.Logs(ctx, id, 30); err == nil && logs != "" {
		r.printf("last log lines of %s:\n%s", TestContainer, logs)
	}
}

// portFree checks that nothing listens on port on this machine's loopback.
func portFree(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("TEST_PORT %d is already in use on this machine: stop what listens there or set TEST_PORT to a free port", port)
	}
	return l.Close()
}
