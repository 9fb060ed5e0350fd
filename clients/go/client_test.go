package comfyreality

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	runtimev1 "github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// imageWorkflow is EmptyImage -> ImageInvert -> SaveImage, which the fake runs at once.
func imageWorkflow(prefix string, color int) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{
			"width": 64, "height": 48, "batch_size": 1, "color": color,
		}},
		"2": map[string]any{"class_type": "ImageInvert", "inputs": map[string]any{
			"image": []any{"1", 0},
		}},
		"3": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{
			"images": []any{"2", 0}, "filename_prefix": prefix,
		}},
	}
}

// delayWorkflow is one TestDelay node: seconds × 0.05 (the fake's time scale) of real time. Its
// nonce is new each time, so the fake's output cache never answers it at once.
func delayWorkflow(seconds float64, steps int) map[string]any {
	return map[string]any{
		"1": map[string]any{"class_type": "TestDelay", "inputs": map[string]any{
			"seconds": seconds, "steps": steps, "nonce": nonces.Add(1),
		}},
	}
}

var nonces atomic.Uint64

func init() { nonces.Store(uint64(time.Now().UnixNano())) }

func uniqueTag(t *testing.T) string {
	return fmt.Sprintf("%s-%d", strings.ToLower(t.Name()), time.Now().UnixNano())
}

func TestExecuteMapWatchDownload(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	client := dial(t)

	execution, err := client.Execute(ctx, imageWorkflow("gosdk", 7691863),
		WithTags("go-sdk", "watch"), WithPriority(PriorityHigh))
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if execution.GetId() == "" || execution.GetRootTaskId() == "" {
		t.Fatalf("Execute returned no id or root task: %v", execution)
	}
	if execution.GetPriority() != PriorityHigh {
		t.Errorf("priority %v, want HIGH", execution.GetPriority())
	}

	var events []*Event
	for event, err := range client.Watch(ctx, execution.GetId()) {
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		events = append(events, event)
	}
	// The execution may have ended before the watch began: then Watch yields nothing, which is
	// right, but this test wants to see the stream, so it runs a slow one below as well.
	checkWatchedEvents(t, execution, events, runtimev1.TaskEventType_TASK_EVENT_TYPE_COMPLETED)

	done, err := client.Get(ctx, execution.GetId())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if done.GetStatus() != StatusCompleted {
		t.Fatalf("status %v (error %q), want COMPLETED", done.GetStatus(), done.GetError())
	}
	if len(done.GetArtifacts()) != 1 {
		t.Fatalf("artifacts %v, want one PNG", done.GetArtifacts())
	}
	artifact := done.GetArtifacts()[0]

	var downloaded bytes.Buffer
	if err := client.Download(ctx, done.GetId(), artifact, &downloaded); err != nil {
		t.Fatalf("Download: %v", err)
	}
	written, err := os.ReadFile(filepath.Join(comfyOutput, "comfy-reality", done.GetId(), artifact))
	if err != nil {
		t.Fatalf("the fake's output file: %v", err)
	}
	if !bytes.Equal(downloaded.Bytes(), written) {
		t.Fatalf("downloaded %d bytes differ from the %d bytes the fake wrote", downloaded.Len(), len(written))
	}
	if !bytes.HasPrefix(written, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("the artifact is not a PNG")
	}

	err = client.Download(ctx, done.GetId(), "not-an-artifact.png", io.Discard)
	if !IsInvalidArgument(err) {
		t.Fatalf("Download of an unknown path: %v, want INVALID_ARGUMENT", err)
	}
}

// checkWatchedEvents checks what Watch yielded: strictly increasing sequences, all about the
// execution, ending with the root task's terminal event of type end.
func checkWatchedEvents(t *testing.T, execution *Execution, events []*Event, end runtimev1.TaskEventType) {
	t.Helper()
	if len(events) == 0 {
		return
	}
	for i, event := range events {
		if i > 0 && event.GetSequence() <= events[i-1].GetSequence() {
			t.Fatalf("sequence %d after %d", event.GetSequence(), events[i-1].GetSequence())
		}
		if event.GetExecutionId() != execution.GetId() {
			t.Fatalf("event %d is about execution %q, not %q", event.GetSequence(), event.GetExecutionId(), execution.GetId())
		}
	}
	last := events[len(events)-1].GetTaskEvent()
	if last == nil || last.GetTaskId() != execution.GetRootTaskId() || last.GetEventType() != end {
		t.Fatalf("the last event is %v, want the root task's %v", events[len(events)-1], end)
	}
}

func TestWatchSlowExecutionToTheEnd(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	client := dial(t)
	// 20 s × 0.05 = 1 s in 5 steps.
	execution, err := client.Execute(ctx, delayWorkflow(20, 5))
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	var events []*Event
	progress := 0
	nodeEvents := 0
	for event, err := range client.Watch(ctx, execution.GetId()) {
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		events = append(events, event)
		if event.GetNode() {
			nodeEvents++
		}
		if event.GetTaskEvent().GetEventType() == runtimev1.TaskEventType_TASK_EVENT_TYPE_PROGRESS {
			progress++
		}
	}
	if len(events) == 0 {
		t.Fatalf("Watch yielded nothing for an execution that runs for a second")
	}
	checkWatchedEvents(t, execution, events, runtimev1.TaskEventType_TASK_EVENT_TYPE_COMPLETED)
	if nodeEvents == 0 || progress < 3 {
		t.Fatalf("%d node events and %d progress events, want node events and the steps", nodeEvents, progress)
	}

	// Wait on a finished execution returns it at once.
	done, err := client.Wait(ctx, execution.GetId())
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if done.GetStatus() != StatusCompleted {
		t.Fatalf("status %v, want COMPLETED", done.GetStatus())
	}
}

func TestExecuteFile(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	client := dial(t)
	dir := t.TempDir()

	path := filepath.Join(dir, "workflow.json")
	text, err := json.MarshalIndent(imageWorkflow("gofile", 255), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	execution, err := client.ExecuteFile(ctx, path, WithTags("go-sdk", "file"))
	if err != nil {
		t.Fatalf("ExecuteFile: %v", err)
	}
	done, err := client.Wait(ctx, execution.GetId())
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if done.GetStatus() != StatusCompleted || len(done.GetArtifacts()) != 1 {
		t.Fatalf("status %v, artifacts %v: want COMPLETED with one", done.GetStatus(), done.GetArtifacts())
	}

	// A file that is not JSON is a local error: no call, no gRPC code.
	notJSON := filepath.Join(dir, "workflow.txt")
	if err := os.WriteFile(notJSON, []byte("EmptyImage -> SaveImage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = client.ExecuteFile(ctx, notJSON)
	if err == nil || !strings.Contains(err.Error(), "workflow.txt") || !strings.Contains(err.Error(), "not valid JSON") {
		t.Fatalf("ExecuteFile of a text file: %v, want a local 'not valid JSON' error naming the file", err)
	}
	if FromError(err) != nil {
		t.Fatalf("ExecuteFile of a text file returned a server error: %v", err)
	}
	_, err = client.ExecuteFile(ctx, filepath.Join(dir, "missing.json"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ExecuteFile of a missing file: %v, want os.ErrNotExist", err)
	}
	_, err = client.Execute(ctx, json.RawMessage(`[1, 2]`))
	if err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Fatalf("Execute of a JSON array: %v, want a local error", err)
	}
}

func TestCancelSlowExecution(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	client := dial(t)
	// 600 s × 0.05 = 30 s unless cancelled.
	execution, err := client.Execute(ctx, delayWorkflow(600, 600), WithTags("go-sdk", "cancel"))
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	cancelled := false
	var events []*Event
	for event, err := range client.Watch(ctx, execution.GetId()) {
		if err != nil {
			t.Fatalf("Watch: %v", err)
		}
		events = append(events, event)
		// Cancel once the node reports progress: it is running in ComfyUI.
		if !cancelled && event.GetNode() &&
			event.GetTaskEvent().GetEventType() == runtimev1.TaskEventType_TASK_EVENT_TYPE_PROGRESS {
			cancelled = true
			answer, err := client.Cancel(ctx, execution.GetId(), "go sdk test")
			if err != nil {
				t.Fatalf("Cancel: %v", err)
			}
			if s := answer.GetStatus(); s != StatusRunning && s != StatusCancelled {
				t.Fatalf("Cancel answered %v, want RUNNING or CANCELLED", s)
			}
		}
	}
	if !cancelled {
		t.Fatalf("the execution ended before it reported progress")
	}
	checkWatchedEvents(t, execution, events, runtimev1.TaskEventType_TASK_EVENT_TYPE_CANCELLED)
	done, err := client.Get(ctx, execution.GetId())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if done.GetStatus() != StatusCancelled {
		t.Fatalf("status %v, want CANCELLED", done.GetStatus())
	}
	// Cancelling a finished execution returns it unchanged.
	again, err := client.Cancel(ctx, execution.GetId(), "")
	if err != nil || again.GetStatus() != StatusCancelled {
		t.Fatalf("second Cancel: %v, %v", again.GetStatus(), err)
	}
}

func TestInvalidWorkflowFieldViolations(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	client := dial(t)
	workflow := imageWorkflow("invalid", 0)
	workflow["1"].(map[string]any)["inputs"].(map[string]any)["width"] = 0
	workflow["4"] = map[string]any{"class_type": "NoSuchNode", "inputs": map[string]any{}}

	_, err := client.Execute(ctx, workflow)
	if !IsInvalidArgument(err) {
		t.Fatalf("Execute: %v, want INVALID_ARGUMENT", err)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%T is not an *Error", err)
	}
	if e.Code != codes.InvalidArgument || e.Reason != "ValidationError" {
		t.Fatalf("code %v reason %q, want InvalidArgument ValidationError", e.Code, e.Reason)
	}
	want := map[string]string{
		`workflow_json["1"].inputs.width`: "value 0 is smaller than the minimum 1",
		`workflow_json["4"].class_type`:   `unknown node class "NoSuchNode"`,
	}
	for field, description := range want {
		found := false
		for _, v := range e.FieldViolations {
			if v.Field == field && strings.Contains(v.Description, description) {
				found = true
			}
		}
		if !found {
			t.Errorf("no violation %s: %s in %+v", field, description, e.FieldViolations)
		}
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("status.Code of an *Error: %v", status.Code(err))
	}
}

func TestNotFound(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	client := dial(t)
	const unknown = "00000000-0000-0000-0000-000000000000"

	_, err := client.Get(ctx, unknown)
	if !IsNotFound(err) {
		t.Fatalf("Get: %v, want NOT_FOUND", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.NotFound || e.Reason == "" || e.Metadata["id"] != unknown {
		t.Fatalf("Get's error %#v, want an *Error with its ErrorInfo", err)
	}
	if _, err := client.Cancel(ctx, unknown, "no"); !IsNotFound(err) {
		t.Fatalf("Cancel: %v, want NOT_FOUND", err)
	}
	if _, err := client.Wait(ctx, unknown); !IsNotFound(err) {
		t.Fatalf("Wait: %v, want NOT_FOUND", err)
	}
	if err := client.Download(ctx, unknown, "x.png", io.Discard); !IsNotFound(err) {
		t.Fatalf("Download: %v, want NOT_FOUND", err)
	}
	if _, err := client.Execute(ctx, WorkflowRef{ID: "no-such-workflow"}); !IsNotFound(err) {
		t.Fatalf("Execute of an unknown workflow: %v, want NOT_FOUND", err)
	}
}

func TestListAcrossPages(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	var listCalls atomic.Int32
	client := dial(t, WithDialOptions(grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
			invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
		) error {
			if strings.HasSuffix(method, "/ListExecutions") {
				listCalls.Add(1)
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		})))
	tag := uniqueTag(t)
	var ids []string
	for i := range 5 {
		execution, err := client.Execute(ctx, imageWorkflow("list", i), WithTags(tag))
		if err != nil {
			t.Fatalf("Execute %d: %v", i, err)
		}
		ids = append(ids, execution.GetId())
	}

	var listed []string
	for execution, err := range client.List(ctx, WithTags(tag), WithPageSize(2)) {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		listed = append(listed, execution.GetId())
	}
	if fmt.Sprint(listed) != fmt.Sprint(ids) {
		t.Fatalf("listed %v, want %v (oldest first)", listed, ids)
	}
	if calls := listCalls.Load(); calls != 3 {
		t.Fatalf("%d ListExecutions calls for 5 executions in pages of 2, want 3", calls)
	}

	// Breaking out early stops fetching pages.
	listCalls.Store(0)
	for range client.List(ctx, WithTags(tag), WithPageSize(2)) {
		break
	}
	if calls := listCalls.Load(); calls != 1 {
		t.Fatalf("%d ListExecutions calls after a break on the first item, want 1", calls)
	}

	var listErr error
	for _, err := range client.List(ctx, WithPageSize(5000)) {
		listErr = err
		break
	}
	if !IsInvalidArgument(listErr) {
		t.Fatalf("List with page_size 5000: %v, want INVALID_ARGUMENT", listErr)
	}
}

func TestOverridesArriveExactly(t *testing.T) {
	ctx := testContext(t, 60*time.Second)
	client := dial(t)
	workflow := map[string]any{
		"1": map[string]any{"class_type": "TestDelay", "inputs": map[string]any{
			"seconds": 1, "steps": 1, "nonce": 7, // replaced below
		}},
	}
	execution, err := client.Execute(ctx, workflow,
		WithOverride("1", "nonce", uint64(math.MaxUint64)),
		WithOverride("1", "seconds", 0.5),
		WithOverride("1", "steps", 2),
		WithOverride("1", "progress_text", true),
		WithTimeout(2*time.Minute),
		WithMaxRetries(1),
	)
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	done, err := client.Wait(ctx, execution.GetId())
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if done.GetStatus() != StatusCompleted || done.GetPromptId() == "" {
		t.Fatalf("status %v prompt %q (error %q), want COMPLETED", done.GetStatus(), done.GetPromptId(), done.GetError())
	}
	root := done.GetTasks()[0]
	for _, task := range done.GetTasks() {
		if task.GetId() == done.GetRootTaskId() {
			root = task
		}
	}
	if root.GetMaxRetries() != 1 || root.GetTimeoutSeconds() != 120 {
		t.Errorf("root task max_retries %d timeout %v, want 1 and 120", root.GetMaxRetries(), root.GetTimeoutSeconds())
	}

	// The prompt exactly as ComfyUI received it.
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, comfyURL+"/history/"+done.GetPromptId(), nil)
	if err != nil {
		t.Fatal(err)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatalf("GET /history: %v", err)
	}
	defer response.Body.Close()
	history, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, pattern := range []string{
		`"nonce": 18446744073709551615[,}]`,
		`"seconds": 0\.5[,}]`,
		`"steps": 2[,}]`,
		`"progress_text": true[,}]`,
	} {
		if !regexp.MustCompile(pattern).Match(history) {
			missing = append(missing, pattern)
		}
	}
	if len(missing) > 0 {
		t.Errorf("ComfyUI's /history lacks %q:\n%s", missing, history)
	}
}

func TestOverrideValueTypes(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	client := dial(t)
	_, err := client.Execute(ctx, delayWorkflow(1, 1), WithOverride("1", "nonce", []int{1}))
	if err == nil || !strings.Contains(err.Error(), "unsupported value type []int") || FromError(err) != nil {
		t.Fatalf("an override of type []int: %v, want a local error", err)
	}
	_, err = client.Execute(ctx, delayWorkflow(1, 1), WithOverride("1", "seconds", math.NaN()))
	if err == nil || FromError(err) != nil {
		t.Fatalf("a NaN override: %v, want a local error", err)
	}
	for _, c := range []struct {
		value any
		want  string
	}{
		{int64(math.MinInt64), "int_value:-9223372036854775808"},
		{uint64(math.MaxUint64), "uint_value:18446744073709551615"},
		{7, "int_value:7"},
		{uint32(7), "uint_value:7"},
		{1.5, "double_value:1.5"},
		{float32(0.25), "double_value:0.25"},
		{json.Number("18446744073709551615"), "uint_value:18446744073709551615"},
		{json.Number("-3"), "int_value:-3"},
		{json.Number("2.5"), "double_value:2.5"},
		{"a cat", `string_value:"a cat"`},
		{false, "bool_value:false"},
	} {
		value, err := inputValue(c.value)
		if err != nil {
			t.Fatalf("inputValue(%v): %v", c.value, err)
		}
		if got := strings.ReplaceAll(value.String(), " ", ""); got != strings.ReplaceAll(c.want, " ", "") {
			t.Errorf("inputValue(%#v) = %s, want %s", c.value, got, c.want)
		}
	}
}

func TestIdempotencyKey(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	client := dial(t)
	key := uniqueTag(t)
	first, err := client.Execute(ctx, imageWorkflow("idem", 1), WithIdempotencyKey(key))
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	second, err := client.Execute(ctx, imageWorkflow("idem", 1), WithIdempotencyKey(key))
	if err != nil {
		t.Fatalf("Execute again: %v", err)
	}
	if first.GetId() != second.GetId() {
		t.Fatalf("the same key and body gave executions %s and %s", first.GetId(), second.GetId())
	}
	_, err = client.Execute(ctx, imageWorkflow("idem", 2), WithIdempotencyKey(key))
	if !IsAlreadyExists(err) {
		t.Fatalf("the same key with another body: %v, want ALREADY_EXISTS", err)
	}
}

func TestHealth(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	client := dial(t)
	for _, service := range []string{"", "liveness", "readiness"} {
		got, err := client.Health(ctx, service)
		if err != nil {
			t.Fatalf("Health(%q): %v", service, err)
		}
		if got != "SERVING" {
			t.Fatalf("Health(%q) = %s, want SERVING", service, got)
		}
	}
	if _, err := client.Health(ctx, "no.such.Service"); !IsNotFound(err) {
		t.Fatalf("Health of an unknown service: %v, want NOT_FOUND", err)
	}
}

// TestWatchSurvivesServerRestart stops the server (SIGTERM) while Watch follows a running
// execution and starts it again on the same address and data: Watch reconnects after the last
// sequence it saw and ends with the root task's COMPLETED event, with no gap and no duplicate.
func TestWatchSurvivesServerRestart(t *testing.T) {
	ctx := testContext(t, 90*time.Second)
	work := t.TempDir()
	data := filepath.Join(work, "data")
	server, addr, err := startServer(work, "restarted-server", "127.0.0.1:0", data)
	if err != nil {
		t.Fatalf("start a server: %v", err)
	}
	var current atomic.Pointer[process]
	current.Store(server)
	t.Cleanup(func() {
		current.Load().stop()
		if t.Failed() {
			current.Load().dumpLog()
		}
	})

	var subscriptions atomic.Int32
	client, err := Dial(ctx, addr, WithWatchReconnects(40, 50*time.Millisecond),
		WithDialOptions(grpc.WithChainStreamInterceptor(
			func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
				streamer grpc.Streamer, opts ...grpc.CallOption,
			) (grpc.ClientStream, error) {
				if strings.HasSuffix(method, "/SubscribeEvents") {
					subscriptions.Add(1)
				}
				return streamer(ctx, desc, cc, method, opts...)
			})))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// 60 s × 0.05 = 3 s in 30 steps.
	execution, err := client.Execute(ctx, delayWorkflow(60, 30), WithTags("go-sdk", "restart"))
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}

	restarted := make(chan error, 1)
	restarting := false
	var events []*Event
	for event, err := range client.Watch(ctx, execution.GetId()) {
		if err != nil {
			t.Fatalf("Watch: %v (after %d events)", err, len(events))
		}
		events = append(events, event)
		if !restarting && event.GetNode() &&
			event.GetTaskEvent().GetEventType() == runtimev1.TaskEventType_TASK_EVENT_TYPE_PROGRESS {
			restarting = true
			go func() {
				current.Load().stop()
				again, _, err := startServer(work, "restarted-server-2", addr, data)
				if err == nil {
					current.Store(again)
				}
				restarted <- err
			}()
		}
	}
	if !restarting {
		t.Fatal("the execution ended before it reported progress")
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart the server: %v", err)
	}
	checkWatchedEvents(t, execution, events, runtimev1.TaskEventType_TASK_EVENT_TYPE_COMPLETED)
	if n := subscriptions.Load(); n < 2 {
		t.Fatalf("%d SubscribeEvents calls: the watch never reconnected", n)
	}
	t.Logf("%d events, %d SubscribeEvents calls", len(events), subscriptions.Load())
	done, err := client.Get(ctx, execution.GetId())
	if err != nil || done.GetStatus() != StatusCompleted {
		t.Fatalf("after the restart: %v, %v; want COMPLETED", done.GetStatus(), err)
	}
}
