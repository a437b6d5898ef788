package wsl

import (
	"fmt"
	"path"
	"strings"
)

// MountRoot is where WSL mounts the Windows drives (wsl.conf's
// automount.root, "/mnt/" unless changed there).
const MountRoot = "/mnt/"

// LinuxPath turns an absolute path on Windows into the path the same file
// has inside the WSL distro named distro:
//
//	C:\Users\Ana\CareBot            -> /mnt/c/Users/Ana/CareBot
//	d:/data                          -> /mnt/d/data
//	\\wsl$\Ubuntu-22.04\home\ana\p   -> /home/ana/p   (also \\wsl.localhost\...)
//	\\?\C:\very\long\path           -> /mnt/c/very/long/path
//	/home/ana/p                      -> /home/ana/p   (already a Linux path)
//
// Spaces and non-ASCII names are kept as they are; "." and ".." are
// resolved. A relative path (also "C:file", relative to drive C's current
// folder), a path into another distro than distro, and a network share
// (\\server\share) are errors: the engine in WSL could not find them.
// Path names only what it converts, so errors fit in a sentence.
func LinuxPath(p, distro string) (string, error) {
	orig := p
	if p == "" {
		return "", fmt.Errorf("empty path")
	}
	// Already a Linux path (the forced WSL mode on Linux, or a path the
	// user wrote for WSL). "//x" is a UNC path written with slashes.
	if strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "//") {
		return path.Clean(p), nil
	}
	p = strings.ReplaceAll(p, `\`, "/")
	switch {
	case strings.HasPrefix(strings.ToUpper(p), "//?/UNC/"):
		p = "//" + p[len("//?/UNC/"):]
	case strings.HasPrefix(p, "//?/"), strings.HasPrefix(p, "//./"):
		rest := p[len("//?/"):]
		if !isDrive(rest) {
			return "", fmt.Errorf("%s is a Windows device path, not a folder the engine in WSL can mount", orig)
		}
		p = rest
	}
	if isDrive(p) {
		rest := p[2:]
		if rest != "" && rest[0] != '/' {
			return "", fmt.Errorf("%s is relative to drive %s's current folder: give an absolute path such as %s/%s", orig, p[:2], p[:2], rest)
		}
		// Clean the part below the drive first, so ".." stops at its root.
		return strings.TrimSuffix(MountRoot+strings.ToLower(p[:1])+path.Clean("/"+rest), "/"), nil
	}
	if strings.HasPrefix(p, "//") {
		return uncPath(orig, p[2:], distro)
	}
	return "", fmt.Errorf("%s is a relative path: give an absolute one", orig)
}

// uncPath handles \\server\share\rest (rest given with slashes, without
// the leading two).
func uncPath(orig, p, distro string) (string, error) {
	server, rest, _ := strings.Cut(p, "/")
	share, rest, _ := strings.Cut(rest, "/")
	if server == "" || share == "" {
		return "", fmt.Errorf("%s is not a complete network path (\\\\server\\share\\...)", orig)
	}
	if !strings.EqualFold(server, "wsl$") && !strings.EqualFold(server, "wsl.localhost") {
		return "", fmt.Errorf(`%s is on the network share \\%s\%s, which the engine in WSL cannot mount: copy the project to a local drive or into WSL (\\wsl$\%s\home\...)`, orig, server, share, distro)
	}
	// Distro names are matched without regard to case, as wsl.exe does.
	if !strings.EqualFold(share, distro) {
		return "", fmt.Errorf("%s is inside WSL distro %s, but the engine is in %s: set WSL_DISTRO=%s or move the project", orig, share, distro, share)
	}
	return path.Clean("/" + rest), nil
}

// isDrive reports whether p starts with a drive letter and colon, "C:".
func isDrive(p string) bool {
	if len(p) < 2 || p[1] != ':' {
		return false
	}
	c := p[0]
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
