package tasks

import "testing"

// TestInstruction: both builders' history lines read as the Dockerfile line.
func TestInstruction(t *testing.T) {
	for in, want := range map[string]string{
		"/bin/sh -c #(nop)  ARG VERSION=dev":               "ARG VERSION=dev",
		"/bin/sh -c #(nop) COPY file:abc in /app/carebot ": "COPY file:abc in /app/carebot",
		"/bin/sh -c make":                                  "RUN make",
		"ARG VERSION=dev":                                  "ARG VERSION=dev",
		"COPY build/carebot /app/carebot # buildkit":       "COPY build/carebot /app/carebot",
		"RUN /bin/sh -c pip install -r req.txt # buildkit": "RUN pip install -r req.txt",
		`RUN /bin/busybox --install -s /bin # buildkit`:    "RUN /bin/busybox --install -s /bin",
		"ENTRYPOINT [\"/app/carebot\"]":                    `ENTRYPOINT ["/app/carebot"]`,
		"|1 VERSION=v1 /bin/sh -c make":                    "|1 VERSION=v1 /bin/sh -c make",
	} {
		if got := instruction(in); got != want {
			t.Errorf("instruction(%q) = %q, want %q", in, got, want)
		}
	}
}
