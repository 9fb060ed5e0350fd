package comfyreality

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	runtimev1 "github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeRuntime is an in-process EventService and ExecutionService whose SubscribeEvents follows
// a script, to drive Watch through drops and reconnects the real server rarely shows.
type fakeRuntime struct {
	runtimev1.UnimplementedEventServiceServer
	runtimev1.UnimplementedExecutionServiceServer

	execution *runtimev1.WorkflowExecution
	getErr    error
	getHeader metadata.MD
	script    func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error

	mu sync.Mutex
	// afters are the after_sequence values of the subscriptions, in order (-1: unset).
	afters []int64
	// auth are the authorization values every call carried.
	auth []string
}

func (f *fakeRuntime) recordAuth(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auth = append(f.auth, md.Get("authorization")...)
}

func (f *fakeRuntime) GetExecution(ctx context.Context, request *runtimev1.GetExecutionRequest) (*runtimev1.GetExecutionResponse, error) {
	f.recordAuth(ctx)
	if f.getHeader != nil {
		_ = grpc.SetHeader(ctx, f.getHeader)
	}
	if f.getErr != nil {
		return nil, f.getErr
	}
	return &runtimev1.GetExecutionResponse{Execution: f.execution}, nil
}

func (f *fakeRuntime) SubscribeEvents(request *runtimev1.SubscribeEventsRequest, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
	f.recordAuth(stream.Context())
	if len(request.GetExecutionIds()) != 1 || request.GetExecutionIds()[0] != f.execution.GetId() || !request.GetIncludeNodeEvents() {
		return status.Error(codes.InvalidArgument, "want one execution id and node events")
	}
	f.mu.Lock()
	call := len(f.afters)
	after := int64(-1)
	if request.AfterSequence != nil {
		after = int64(request.GetAfterSequence())
	}
	f.afters = append(f.afters, after)
	f.mu.Unlock()
	return f.script(call, stream)
}

func (f *fakeRuntime) subscriptions() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.afters...)
}

// startFake serves f on a free port and returns a client for it.
func startFake(t *testing.T, f *fakeRuntime, options ...Option) *Client {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	runtimev1.RegisterEventServiceServer(server, f)
	runtimev1.RegisterExecutionServiceServer(server, f)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	options = append([]Option{WithWatchReconnects(3, time.Millisecond)}, options...)
	client, err := Dial(t.Context(), listener.Addr().String(), options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func runningExecution() *runtimev1.WorkflowExecution {
	root := "root-task"
	return &runtimev1.WorkflowExecution{Id: "exec-1", Status: StatusRunning, RootTaskId: &root}
}

func taskEvent(sequence uint64, taskID string, node bool, kind runtimev1.TaskEventType) *runtimev1.SubscribeEventsResponse {
	execution := "exec-1"
	return &runtimev1.SubscribeEventsResponse{Item: &runtimev1.SubscribeEventsResponse_Event{Event: &runtimev1.Event{
		Sequence:    sequence,
		ExecutionId: &execution,
		TaskId:      &taskID,
		Node:        node,
		Payload: &runtimev1.Event_TaskEvent{TaskEvent: &runtimev1.TaskEvent{
			TaskId: taskID, EventType: kind, Sequence: sequence,
		}},
	}}}
}

func nodeProgress(sequence uint64) *runtimev1.SubscribeEventsResponse {
	return taskEvent(sequence, "node-task", true, runtimev1.TaskEventType_TASK_EVENT_TYPE_PROGRESS)
}

func rootCompleted(sequence uint64) *runtimev1.SubscribeEventsResponse {
	return taskEvent(sequence, "root-task", false, runtimev1.TaskEventType_TASK_EVENT_TYPE_COMPLETED)
}

func heartbeat(last uint64) *runtimev1.SubscribeEventsResponse {
	return &runtimev1.SubscribeEventsResponse{Item: &runtimev1.SubscribeEventsResponse_Heartbeat{
		Heartbeat: &runtimev1.Heartbeat{LastSequence: last},
	}}
}

// endedEarly is the server's status for a stream it ends (UNAVAILABLE on shutdown,
// RESOURCE_EXHAUSTED for a subscriber behind) with ErrorInfo last_sequence.
func endedEarly(t *testing.T, code codes.Code, last uint64) error {
	st, err := status.New(code, "stream ended early").WithDetails(&errdetails.ErrorInfo{
		Reason:   "RuntimeError",
		Domain:   "comfyreality.runtime.v1",
		Metadata: map[string]string{"last_sequence": strconv.FormatUint(last, 10)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func send(stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse], items ...*runtimev1.SubscribeEventsResponse) error {
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for _, item := range items {
		if err := stream.Send(item); err != nil {
			return err
		}
	}
	return nil
}

func watchAll(t *testing.T, client *Client) ([]uint64, error) {
	t.Helper()
	ctx := testContext(t, 20*time.Second)
	var sequences []uint64
	for event, err := range client.Watch(ctx, "exec-1") {
		if err != nil {
			return sequences, err
		}
		sequences = append(sequences, event.GetSequence())
	}
	return sequences, nil
}

func TestWatchResumesWithoutGapOrDuplicate(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		switch call {
		case 0: // an event, a heartbeat past it, then the server shuts down
			if err := send(stream, nodeProgress(10), heartbeat(11)); err != nil {
				return err
			}
			return endedEarly(t, codes.Unavailable, 11)
		case 1: // resumed after 11: a duplicate (skipped), a new event, then "subscriber behind"
			if err := send(stream, nodeProgress(10), nodeProgress(12)); err != nil {
				return err
			}
			return endedEarly(t, codes.ResourceExhausted, 12)
		case 2: // resumed after 12: the end, then an event Watch must not yield
			if err := send(stream, rootCompleted(13), nodeProgress(14)); err != nil {
				return err
			}
			<-stream.Context().Done()
			return nil
		default:
			return status.Error(codes.Internal, "too many subscriptions")
		}
	}
	client := startFake(t, f, WithAPIKey("secret-key"))
	sequences, err := watchAll(t, client)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if got, want := sequences, []uint64{10, 12, 13}; !slices.Equal(got, want) {
		t.Fatalf("yielded sequences %v, want %v", got, want)
	}
	if got, want := f.subscriptions(), []int64{-1, 11, 12}; !slices.Equal(got, want) {
		t.Fatalf("after_sequence of the subscriptions %v, want %v (-1: from now)", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.auth) != 4 { // three subscriptions and one GetExecution
		t.Fatalf("authorization sent %d times, want 4: %v", len(f.auth), f.auth)
	}
	for _, value := range f.auth {
		if value != "Bearer secret-key" {
			t.Fatalf("authorization %q, want Bearer secret-key", value)
		}
	}
}

func TestWatchResumesFromTheServersLastSequence(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		if call == 0 { // nothing seen yet: where to resume comes from ErrorInfo
			if err := send(stream); err != nil {
				return err
			}
			return endedEarly(t, codes.Unavailable, 5)
		}
		return send(stream, rootCompleted(6))
	}
	sequences, err := watchAll(t, startFake(t, f))
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if !slices.Equal(sequences, []uint64{6}) || !slices.Equal(f.subscriptions(), []int64{-1, 5}) {
		t.Fatalf("yielded %v after subscriptions %v, want [6] after [-1 5]", sequences, f.subscriptions())
	}
}

func TestWatchGivesUpAfterFailedReconnects(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		if call == 0 {
			if err := send(stream, nodeProgress(1)); err != nil {
				return err
			}
		}
		return status.Error(codes.Unavailable, "down")
	}
	sequences, err := watchAll(t, startFake(t, f))
	if !IsUnavailable(err) || !slices.Equal(sequences, []uint64{1}) {
		t.Fatalf("Watch yielded %v then %v, want [1] then UNAVAILABLE", sequences, err)
	}
	if got := len(f.subscriptions()); got != 4 { // the first and 3 reconnects
		t.Fatalf("%d subscriptions, want 4", got)
	}
}

func TestWatchStopsOnAnErrorItCannotResume(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		if call == 0 {
			if err := send(stream, nodeProgress(1)); err != nil {
				return err
			}
			return endedEarly(t, codes.Unavailable, 1)
		}
		return status.Error(codes.OutOfRange, "after_sequence 1 is older than the retained history")
	}
	_, err := watchAll(t, startFake(t, f))
	if !IsOutOfRange(err) || len(f.subscriptions()) != 2 {
		t.Fatalf("Watch: %v after %d subscriptions, want OUT_OF_RANGE after 2", err, len(f.subscriptions()))
	}
}

func TestWatchOfAFinishedExecutionYieldsNothing(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	f.execution.Status = StatusFailed
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		if err := send(stream); err != nil {
			return err
		}
		<-stream.Context().Done()
		return nil
	}
	sequences, err := watchAll(t, startFake(t, f))
	if err != nil || len(sequences) != 0 {
		t.Fatalf("Watch yielded %v, %v; want nothing", sequences, err)
	}
}

func TestWatchBreakEndsTheStream(t *testing.T) {
	f := &fakeRuntime{execution: runningExecution()}
	ended := make(chan struct{})
	f.script = func(call int, stream grpc.ServerStreamingServer[runtimev1.SubscribeEventsResponse]) error {
		if err := send(stream, nodeProgress(1), nodeProgress(2)); err != nil {
			return err
		}
		<-stream.Context().Done()
		close(ended)
		return nil
	}
	client := startFake(t, f)
	for range client.Watch(t.Context(), "exec-1") {
		break
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's stream was not cancelled after the loop broke")
	}
}

func TestErrorDetailsDecode(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "the queue is full").WithDetails(
		&errdetails.ErrorInfo{Reason: "RuntimeError", Domain: "comfyreality.runtime.v1", Metadata: map[string]string{"queue": "1000"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: `overrides["3"].seed`, Description: "must be an integer"},
		}},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := FromError(st.Err())
	if e == nil || e.Code != codes.ResourceExhausted || e.Message != "the queue is full" ||
		e.Reason != "RuntimeError" || e.Domain != "comfyreality.runtime.v1" || e.Metadata["queue"] != "1000" ||
		e.RetryAfter != 1500*time.Millisecond ||
		len(e.FieldViolations) != 1 || e.FieldViolations[0] != (FieldViolation{`overrides["3"].seed`, "must be an integer"}) {
		t.Fatalf("decoded %+v", e)
	}
	if !IsResourceExhausted(e) || !errors.Is(e, &Error{Code: codes.ResourceExhausted}) || errors.Is(e, &Error{Code: codes.NotFound}) {
		t.Fatal("the helpers disagree with the code")
	}
	if status.Code(e) != codes.ResourceExhausted {
		t.Fatalf("status.Code(*Error) = %v", status.Code(e))
	}
	if FromError(errors.New("local")) != nil || FromError(nil) != nil {
		t.Fatal("FromError of a non-gRPC error must be nil")
	}
}

func TestRetryAfterHeader(t *testing.T) {
	f := &fakeRuntime{
		execution: runningExecution(),
		getErr:    status.Error(codes.ResourceExhausted, "slow down"),
		getHeader: metadata.Pairs("retry-after", "3"),
	}
	client := startFake(t, f)
	_, err := client.Get(t.Context(), "exec-1")
	var e *Error
	if !errors.As(err, &e) || e.Code != codes.ResourceExhausted || e.RetryAfter != 3*time.Second {
		t.Fatalf("Get: %#v, want RESOURCE_EXHAUSTED with RetryAfter 3s from the header", err)
	}
}
