package fleet

import (
	"bytes"
	"fmt"
	"path"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/carebot/carebot/internal/engine"
)

// StackFile is COMPOSE_FILE read the way `docker stack deploy` reads it.
type StackFile struct {
	Data     []byte   // what the manager gets: the file, with a version line when it had none
	Services []string // the services that run IMAGE_NAME: their health is the deploy's
	Warnings []string // what Swarm ignores or does differently, one line each
	// Placement is each such service's deploy.placement.constraints.
	Placement map[string][]string
}

// stackIgnored are service keys docker stack deploy ignores (it says so
// in a line nobody reads): each gets a warning.
var stackIgnored = map[string]string{
	"container_name": "Swarm names the containers itself",
	"build":          "the stack runs the image this tool built and delivered",
	"restart":        "use deploy.restart_policy",
	"depends_on":     "Swarm starts services in any order",
	"links":          "services reach each other by name on the stack's network",
	"network_mode":   "Swarm attaches the stack's networks",
	"devices":        "Swarm does not map devices",
}

// stackRefused are service keys the Compose file format 3 (what docker
// stack deploy validates against) does not know: the stack deploy fails.
var stackRefused = map[string]string{
	"mem_limit":       "use deploy.resources.limits.memory",
	"memswap_limit":   "remove it (Swarm has no swap limit)",
	"mem_reservation": "use deploy.resources.reservations.memory",
	"cpus":            "use deploy.resources.limits.cpus",
	"cpu_shares":      "use deploy.resources.limits.cpus",
	"cpu_quota":       "use deploy.resources.limits.cpus",
	"extends":         "write the service out in full",
	"profiles":        "remove it (a stack deploys every service)",
	"pull_policy":     "remove it (the image is delivered, never pulled)",
	"develop":         "remove it",
}

// ReadStackFile checks a compose file for docker stack deploy: it refuses,
// with the fix, what makes the deploy fail; lists as warnings what Swarm
// ignores or where it differs (a data folder on one node, env_file values
// in the service spec); and adds `version: "3.8"` when the file has none
// (Docker's CLI before 23 refuses a file without it).
func ReadStackFile(name string, data []byte, imageName string) (*StackFile, error) {
	var doc struct {
		Version  any                       `yaml:"version"`
		Services map[string]map[string]any `yaml:"services"`
		Secrets  map[string]any            `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s is not valid YAML: %v", name, firstLine(err.Error()))
	}
	sf := &StackFile{Data: data, Placement: map[string][]string{}}
	switch v := fmt.Sprint(doc.Version); {
	case doc.Version == nil:
		sf.Data = withVersion(data)
	case !strings.HasPrefix(v, "3"):
		return nil, fmt.Errorf("%s says version: %q, and docker stack deploy reads version 3 files only: set version: \"3.8\" (and move what only version 2 knows into deploy:)", name, v)
	}
	if len(doc.Services) == 0 {
		return nil, fmt.Errorf("%s has no services: a stack needs one that runs ${IMAGE_NAME}:${IMAGE_TAG}", name)
	}
	names := make([]string, 0, len(doc.Services))
	for n := range doc.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	envFile := false
	for _, n := range names {
		svc := doc.Services[n]
		keys := make([]string, 0, len(svc))
		for k := range svc {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if fix, ok := stackRefused[k]; ok {
				return nil, fmt.Errorf("%s: service %s has %s, which docker stack deploy refuses (Compose file format 3): %s", name, n, k, fix)
			}
			if why, ok := stackIgnored[k]; ok {
				sf.Warnings = append(sf.Warnings, fmt.Sprintf("service %s: Swarm ignores %s (%s)", n, k, why))
			}
		}
		if dep, ok := svc["depends_on"].(map[string]any); ok && len(dep) > 0 {
			return nil, fmt.Errorf("%s: service %s has depends_on with conditions, which docker stack deploy refuses: list the names only, or remove it", name, n)
		}
		if _, ok := svc["env_file"]; ok {
			envFile = true
		}
		if img, _ := svc["image"].(string); strings.Contains(img, "${IMAGE_NAME") || strings.HasPrefix(img, imageName+":") {
			sf.Services = append(sf.Services, n)
			sf.Placement[n] = constraints(svc)
			if !strings.Contains(img, "${IMAGE_TAG") {
				return nil, fmt.Errorf("%s: service %s runs %s: write its image as ${IMAGE_NAME}:${IMAGE_TAG}, so each deploy pins the build it delivered", name, n, img)
			}
		}
		if w := dataOnOneNode(n, svc); w != "" {
			sf.Warnings = append(sf.Warnings, w)
		}
	}
	if len(sf.Services) == 0 {
		return nil, fmt.Errorf("%s: no service runs ${IMAGE_NAME}:${IMAGE_TAG}: set the image of your service to that", name)
	}
	if envFile {
		sf.Warnings = append(sf.Warnings, "env_file: Swarm copies its values into the service spec, where docker service inspect shows them; put what must stay secret in secrets: (docker secret create, then secrets: in the service)")
	}
	return sf, nil
}

// dataOnOneNode warns when a service keeps data in a folder of the node it
// runs on (a bind mount) and may run on more than one node, or move.
func dataOnOneNode(name string, svc map[string]any) string {
	vols, _ := svc["volumes"].([]any)
	bind := ""
	for _, v := range vols {
		src := ""
		switch v := v.(type) {
		case string:
			src, _, _ = strings.Cut(v, ":")
		case map[string]any:
			if t, _ := v["type"].(string); t == "bind" {
				src, _ = v["source"].(string)
			}
		}
		if strings.HasPrefix(src, "./") || strings.HasPrefix(src, "/") || strings.HasPrefix(src, "../") {
			if path.Base(src) == "data" || bind == "" {
				bind = src
			}
		}
	}
	if bind == "" {
		return ""
	}
	dep, _ := svc["deploy"].(map[string]any)
	constraints := constraints(svc)
	replicas := 1
	if r, ok := dep["replicas"].(int); ok {
		replicas = r
	}
	global := dep["mode"] == "global"
	if len(constraints) > 0 && replicas <= 1 && !global {
		return ""
	}
	return fmt.Sprintf("service %s keeps %s on the node it runs on: with %s its data is not the same on every node (SQLite allows one writer); pin it with deploy.placement.constraints (node.hostname == …) and one replica", name, bind, map[bool]string{true: "mode: global or more than one replica", false: "no placement constraint"}[global || replicas > 1])
}

// constraints are a service's deploy.placement.constraints.
func constraints(svc map[string]any) []string {
	dep, _ := svc["deploy"].(map[string]any)
	placement, _ := dep["placement"].(map[string]any)
	list, _ := placement["constraints"].([]any)
	var out []string
	for _, c := range list {
		if c, ok := c.(string); ok {
			out = append(out, c)
		}
	}
	return out
}

// Runs says whether Swarm may place a task of one of the app's services
// on node n, by their placement constraints. What it cannot tell from the
// node as the manager lists it (engine labels, platform, a ${VARIABLE})
// counts as a match: such a node gets the image, in case.
func (sf *StackFile) Runs(n engine.Node) bool {
	for _, svc := range sf.Services {
		if placeable(sf.Placement[svc], n) {
			return true
		}
	}
	return false
}

// placeable says whether node n meets every constraint.
func placeable(constraints []string, n engine.Node) bool {
	for _, c := range constraints {
		op := "=="
		key, want, ok := strings.Cut(c, op)
		if !ok {
			op = "!="
			if key, want, ok = strings.Cut(c, op); !ok {
				continue
			}
		}
		key, want = strings.TrimSpace(key), strings.Trim(strings.TrimSpace(want), `"'`)
		var have string
		switch {
		case strings.Contains(want, "${"):
			continue
		case key == "node.id":
			have = n.ID
		case key == "node.hostname":
			have = n.Hostname
		case key == "node.role":
			have = n.Role
		case strings.HasPrefix(key, "node.labels."):
			have = n.Labels[strings.TrimPrefix(key, "node.labels.")]
		default:
			continue
		}
		// Swarm compares these case-insensitively.
		if strings.EqualFold(have, want) != (op == "==") {
			return false
		}
	}
	return true
}

// withVersion puts a version line first (after a document marker).
func withVersion(data []byte) []byte {
	line := []byte("version: \"3.8\" # added by carebot: Docker's CLI before 23 refuses a stack file without it\n")
	if bytes.HasPrefix(data, []byte("---\n")) {
		return append(append([]byte("---\n"), line...), data[4:]...)
	}
	return append(line, data...)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
