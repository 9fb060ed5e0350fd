package comfyreality

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The integration tests share one fake ComfyUI and one comfy-reality server, started by
// TestMain on free ports from $COMFY_REALITY_FAKE_BIN and $COMFY_REALITY_BIN (default
// ../../target/debug/...).
var (
	// serverAddr is the server's gRPC address (host:port).
	serverAddr string
	// comfyURL is the fake ComfyUI's base URL (http://127.0.0.1:PORT).
	comfyURL string
	// comfyOutput is the folder the fake's SaveImage writes to.
	comfyOutput string
	// serverBin is the comfy-reality binary.
	serverBin string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	serverBin = binary("COMFY_REALITY_BIN", filepath.Join(root, "target/debug/comfy-reality"))
	fakeBin := binary("COMFY_REALITY_FAKE_BIN", filepath.Join(root, "target/debug/comfy-reality-fake-comfyui"))
	work, err := os.MkdirTemp("", "comfyreality-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)
	comfyOutput = filepath.Join(work, "comfyui-output")

	fake, line, err := startProcess(work, "fake", fakeBin,
		"--port", "0", "--time-scale", "0.05", "--output-dir", comfyOutput)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the fake ComfyUI:", err)
		return 1
	}
	defer fake.stop()
	comfyURL, err = cutPrefix(line, "comfy-reality-fake-comfyui listening on ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	server, addr, err := startServer(work, "server", "127.0.0.1:0", filepath.Join(work, "data"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start comfy-reality serve:", err)
		return 1
	}
	defer server.stop()
	serverAddr = addr

	code := m.Run()
	if code != 0 {
		server.dumpLog()
		fake.dumpLog()
	}
	return code
}

// startServer runs `comfy-reality serve` on listen with its data in dataDir, against the fake,
// and returns its gRPC address.
func startServer(work, name, listen, dataDir string) (*process, string, error) {
	server, line, err := startProcess(work, name, serverBin, "serve",
		"--listen", listen, "--metrics-listen", "127.0.0.1:0",
		"--comfyui", comfyURL, "--data-dir", dataDir)
	if err != nil {
		return nil, "", err
	}
	addr, err := cutPrefix(line, "comfy-reality listening on ")
	if err != nil {
		server.stop()
		return nil, "", err
	}
	return server, addr, nil
}

func binary(variable, fallback string) string {
	if path := os.Getenv(variable); path != "" {
		return path
	}
	return fallback
}

func cutPrefix(line, prefix string) (string, error) {
	rest, ok := strings.CutPrefix(line, prefix)
	if !ok {
		return "", fmt.Errorf("unexpected first line %q (want %q...)", line, prefix)
	}
	return strings.TrimSpace(rest), nil
}

type process struct {
	cmd  *exec.Cmd
	log  string
	name string
}

// startProcess runs the binary with its stderr in work/NAME.log and returns its first stdout
// line (the address it printed once bound); the rest of stdout is drained.
func startProcess(work, name, path string, args ...string) (*process, string, error) {
	logPath := filepath.Join(work, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", err
	}
	defer logFile.Close()
	cmd := exec.Command(path, args...)
	cmd.Stderr = logFile
	cmd.Env = cleanEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &process{cmd: cmd, log: logPath, name: name}
	lines := make(chan string, 1)
	go func() {
		reader := bufio.NewReader(stdout)
		line, _ := reader.ReadString('\n')
		lines <- strings.TrimRight(line, "\r\n")
		_, _ = io.Copy(io.Discard, reader)
	}()
	select {
	case line := <-lines:
		if line == "" {
			p.stop()
			p.dumpLog()
			return nil, "", fmt.Errorf("%s exited without printing its address", path)
		}
		return p, line, nil
	case <-time.After(60 * time.Second):
		p.stop()
		p.dumpLog()
		return nil, "", fmt.Errorf("%s printed no address within 60 s", path)
	}
}

// cleanEnv is this process's environment without COMFY_REALITY_* variables (as the Rust tests
// start the server), so no outside configuration leaks in.
func cleanEnv() []string {
	var env []string
	for _, entry := range os.Environ() {
		if !strings.HasPrefix(strings.ToUpper(entry), "COMFY_REALITY") {
			env = append(env, entry)
		}
	}
	return env
}

// stop sends SIGTERM and waits (SIGKILL after 10 s).
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func (p *process) dumpLog() {
	data, err := os.ReadFile(p.log)
	if err != nil || len(data) == 0 {
		return
	}
	const keep = 8000
	if len(data) > keep {
		data = data[len(data)-keep:]
	}
	fmt.Fprintf(os.Stderr, "--- %s stderr (last %d bytes):\n%s\n", p.name, len(data), data)
}

// testContext is a context that ends with the test (or after the limit).
func testContext(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return ctx
}

// dial connects to the shared server.
func dial(t *testing.T, options ...Option) *Client {
	t.Helper()
	client, err := Dial(t.Context(), serverAddr, options...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
