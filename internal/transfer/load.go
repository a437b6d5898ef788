package transfer

import (
	"fmt"
	"strings"
)

// CheckLoad reads what `docker load` printed, for the failures its exit
// status hides. An engine with the containerd image store imports a partial
// archive whose base layers it lacks, prints "Loaded image", then
// "Error unpacking image ...", and exits 0: the image is there but cannot
// run. Treat that like the classic store's refusal (send the whole image).
func CheckLoad(output string) error {
	for _, line := range strings.Split(output, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "Error ") {
			return fmt.Errorf("docker load: %s", strings.TrimSpace(line))
		}
	}
	if !strings.Contains(output, "Loaded image") {
		return fmt.Errorf("docker load printed no \"Loaded image\": %q", strings.TrimSpace(output))
	}
	return nil
}
