package fleet

import (
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/engine"
)

func TestReadStackFile(t *testing.T) {
	const ok = `services:
  app:
    image: "${IMAGE_NAME}:${IMAGE_TAG}"
    container_name: x
    restart: unless-stopped
    env_file: .env
    volumes:
      - ./data:/app/data
  cache:
    image: redis:7
`
	sf, err := ReadStackFile("stack.yml", []byte(ok), "carebot")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(sf.Data), `version: "3.8"`) || !strings.HasSuffix(string(sf.Data), ok) {
		t.Errorf("a file without version gets one first, and is otherwise unchanged:\n%s", sf.Data)
	}
	if strings.Join(sf.Services, ",") != "app" {
		t.Errorf("services %v, want the one that runs IMAGE_NAME", sf.Services)
	}
	all := strings.Join(sf.Warnings, "\n")
	for _, w := range []string{"Swarm ignores container_name", "Swarm ignores restart", "keeps ./data on the node it runs on: with no placement constraint", "env_file: Swarm copies its values"} {
		if !strings.Contains(all, w) {
			t.Errorf("no warning %q in:\n%s", w, all)
		}
	}

	pinned := strings.Replace(ok, "    volumes:", "    deploy:\n      placement:\n        constraints: [\"node.role == manager\"]\n    volumes:", 1)
	sf, err = ReadStackFile("stack.yml", []byte("version: \"3.9\"\n"+pinned), "carebot")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(sf.Warnings, "\n"), "keeps ./data") || strings.Count(string(sf.Data), "version:") != 1 {
		t.Errorf("a pinned single replica with its own version line: %v\n%s", sf.Warnings, sf.Data)
	}

	for _, tc := range []struct{ file, want string }{
		{"version: \"2.4\"\n" + ok, `says version: "2.4", and docker stack deploy reads version 3 files only`},
		{strings.Replace(ok, "restart: unless-stopped", "mem_limit: 512m", 1), "service app has mem_limit, which docker stack deploy refuses (Compose file format 3): use deploy.resources.limits.memory"},
		{strings.Replace(ok, "restart: unless-stopped", "depends_on:\n      cache:\n        condition: service_healthy", 1), "depends_on with conditions"},
		{"services:\n  app:\n    image: other:1\n", "no service runs ${IMAGE_NAME}:${IMAGE_TAG}"},
		{"services:\n  app:\n    image: \"${IMAGE_NAME}:latest\"\n", "write its image as ${IMAGE_NAME}:${IMAGE_TAG}"},
		{"services: [\n", "is not valid YAML"},
		{"version: \"3.8\"\n", "has no services"},
	} {
		_, err := ReadStackFile("stack.yml", []byte(tc.file), "carebot")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.file, err, tc.want)
		}
	}
}

func TestSwarmTag(t *testing.T) {
	if got := SwarmTag("abc1234-dirty", "sha256:4f60e0120b79deadbeef0000"); got != "abc1234-dirty-4f60e0120b79" {
		t.Errorf("SwarmTag = %q", got)
	}
	if got := tagOf("carebot:v1-4f60e0120b79@sha256:0123"); got != "v1-4f60e0120b79" {
		t.Errorf("tagOf = %q", got)
	}
	if got := tagOf("registry:5000/carebot"); got != "latest" {
		t.Errorf("tagOf without a tag = %q", got)
	}
}

func TestStackFilePlacement(t *testing.T) {
	file := `services:
  bot:
    image: ${IMAGE_NAME}:${IMAGE_TAG}
    deploy:
      placement:
        constraints: ["node.labels.data == yes", "node.role!=manager"]
  web:
    image: ${IMAGE_NAME}:${IMAGE_TAG}
    deploy:
      placement:
        constraints:
          - node.hostname == ${WEB_HOST}
  cache:
    image: redis
    deploy:
      placement:
        constraints: [node.hostname == nowhere]
`
	sf, err := ReadStackFile("stack.yml", []byte(file), "carebot")
	if err != nil {
		t.Fatal(err)
	}
	bot := &StackFile{Services: []string{"bot"}, Placement: sf.Placement}
	for _, c := range []struct {
		n    engine.Node
		bot  bool
		name string
	}{
		{engine.Node{Role: "worker", Labels: map[string]string{"data": "YES"}}, true, "labelled worker (labels compare case-insensitively)"},
		{engine.Node{Role: "manager", Labels: map[string]string{"data": "yes"}}, false, "labelled manager"},
		{engine.Node{Role: "worker"}, false, "worker without the label"},
	} {
		if got := bot.Runs(c.n); got != c.bot {
			t.Errorf("%s: bot runs there %v, want %v", c.name, got, c.bot)
		}
		// web's constraint names a variable: every node may run it.
		if !sf.Runs(c.n) {
			t.Errorf("%s: the stack runs nowhere there, but web's host is not known here", c.name)
		}
	}
	if sf.Placement["cache"] != nil {
		t.Errorf("cache does not run the app's image, its constraints do not count: %v", sf.Placement)
	}
}
