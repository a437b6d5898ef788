package tasks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/health"
)

// roleLabel marks a container as this tool's, so Test and Cleanup never
// remove anything else.
const roleLabel = "com.carebot.role"

// TestContainerName is the test container of image repository name: the
// seed's carebot_test for carebot, and one of its own for every other
// image, so two projects (or two test runs) on one engine never remove
// each other's.
func TestContainerName(imageName string) string {
	return imageName[strings.LastIndexByte(imageName, '/')+1:] + "_test"
}

func (r *Runner) testContainer() string { return TestContainerName(r.Cfg.ImageName) }

// Test runs the built image as its test container (carebot_test) on TEST_PORT with ./test-data as
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
		Name: r.testContainer(), Image: c.Image(), Env: r.testEnv(),
		Labels: map[string]string{roleLabel: "test"}, Binds: binds,
		Publish: engine.Publish{HostIP: "127.0.0.1", HostPort: c.TestPort, ContainerPort: c.AppPort},
	})
	if err != nil {
		return err
	}
	defer func() {
		if keep {
			r.printf("kept %s on port %d (remove it with: docker rm -f %s)\n", r.testContainer(), c.TestPort, r.testContainer())
			return
		}
		if rmErr := e.Remove(context.WithoutCancel(ctx), id); rmErr != nil && err == nil {
			err = rmErr
		}
	}()

	probe := health.Probe{URL: fmt.Sprintf("http://127.0.0.1:%d%s", c.TestPort, c.HealthPath)}
	r.printf("testing %s as %s: waiting up to %s for %s\n", c.Image(), r.testContainer(), c.HealthTimeout, probe.URL)
	st, err := probe.Until(ctx, health.Wait{
		Version: c.ImageTag, Timeout: c.HealthTimeout,
		Alive: func(ctx context.Context) error {
			ct, err := e.Container(ctx, id)
			if err == nil && !ct.Running {
				return fmt.Errorf("%s stopped: %s", r.testContainer(), ct)
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
	ct, err := e.Container(ctx, r.testContainer())
	if errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if ct.Labels[roleLabel] != "test" {
		return fmt.Errorf("a container named %s exists that this tool did not start: rename or remove it (docker rm -f %s)", r.testContainer(), r.testContainer())
	}
	return e.Remove(ctx, ct.ID)
}

func (r *Runner) showContainer(ctx context.Context, e *engine.Engine, id string) {
	if ct, err := e.Container(ctx, id); err == nil {
		r.printf("%s: %s\n", r.testContainer(), ct)
	}
	if logs, err := e.Logs(ctx, id, 30); err == nil && logs != "" {
		r.printf("last log lines of %s:\n%s", r.testContainer(), logs)
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
