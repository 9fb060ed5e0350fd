package comfyreality

import (
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickstartExample runs examples/quickstart (the README's example) against the server:
// it must print progress and save the inverted blue image.
func TestQuickstartExample(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the example: %v", err)
	}
	dir := t.TempDir()
	binary := filepath.Join(dir, "quickstart")
	build := exec.CommandContext(t.Context(), goTool, "build", "-o", binary, "./examples/quickstart")
	if output, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/quickstart: %v\n%s", err, output)
	}
	image := filepath.Join(dir, "inverted.png")
	ctx := testContext(t, time.Minute)
	output, err := exec.CommandContext(ctx, binary, "-addr", serverAddr, "-out", image).CombinedOutput()
	if err != nil {
		t.Fatalf("quickstart: %v\n%s", err, output)
	}
	text := string(output)
	if !strings.Contains(text, "saved quickstart_00001_.png to "+image) {
		t.Fatalf("quickstart printed no 'saved' line:\n%s", text)
	}
	file, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	decoded, err := png.Decode(file)
	if err != nil {
		t.Fatalf("the saved file is not a PNG: %v", err)
	}
	if size := decoded.Bounds().Size(); size.X != 64 || size.Y != 48 {
		t.Fatalf("image %v, want 64×48", size)
	}
	// The override made the image 0x3366ff; inverted, it is 0xcc9900.
	r, g, b, _ := decoded.At(0, 0).RGBA()
	if r>>8 != 0xcc || g>>8 != 0x99 || b>>8 != 0x00 {
		t.Fatalf("pixel (%#x, %#x, %#x), want (0xcc, 0x99, 0x00):\n%s", r>>8, g>>8, b>>8, text)
	}
}

// TestReadmeShowsTheExample keeps README.md's example the program TestQuickstartExample runs.
func TestReadmeShowsTheExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	program, err := os.ReadFile("examples/quickstart/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(program)+"```\n") {
		t.Fatal("README.md's example differs from examples/quickstart/main.go: paste the file into it")
	}
}
