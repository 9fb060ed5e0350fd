// Command quickstart runs a ComfyUI workflow through comfy-reality, prints its progress while
// it runs, and saves the image it produced.
//
//	go run ./examples/quickstart -addr 127.0.0.1:50051 -out inverted.png
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	comfyreality "github.com/comfy-reality/comfy-reality/clients/go"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "comfy-reality's gRPC address")
	out := flag.String("out", "inverted.png", "where to save the image")
	flag.Parse()
	if err := run(context.Background(), *addr, *out); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr, out string) error {
	client, err := comfyreality.Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer client.Close()

	// A ComfyUI API-format graph: a 64×48 image, inverted, saved.
	workflow := map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{
			"width": 64, "height": 48, "batch_size": 1, "color": 0,
		}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{"image": []any{"1", 0}}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{
			"images": []any{"2", 0}, "filename_prefix": "quickstart",
		}},
	}
	execution, err := client.Execute(ctx, workflow,
		comfyreality.WithTags("quickstart"),
		comfyreality.WithOverride("1", "color", 0x3366ff), // this run only: a blue image
	)
	if err != nil {
		return err
	}
	fmt.Println("execution", execution.GetId(), execution.GetStatus())

	for event, err := range client.Watch(ctx, execution.GetId()) {
		if err != nil {
			return err
		}
		if taskEvent := event.GetTaskEvent(); taskEvent != nil {
			who := "execution"
			if event.GetNode() {
				who = "node"
			}
			kind := strings.TrimPrefix(taskEvent.GetEventType().String(), "TASK_EVENT_TYPE_")
			fmt.Printf("%6d %-9s %-9s %s\n", event.GetSequence(), who, kind, taskEvent.GetMessage())
		}
	}

	execution, err = client.Get(ctx, execution.GetId())
	if err != nil {
		return err
	}
	if execution.GetStatus() != comfyreality.StatusCompleted {
		return fmt.Errorf("execution %s ended %s: %s", execution.GetId(), execution.GetStatus(), execution.GetError())
	}
	file, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := client.Download(ctx, execution.GetId(), execution.GetArtifacts()[0], file); err != nil {
		file.Close()
		return err
	}
	if err := file.Close(); err != nil {
		return err
	}
	fmt.Println("saved", execution.GetArtifacts()[0], "to", out)
	return nil
}
