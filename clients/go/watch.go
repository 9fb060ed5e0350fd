package comfyreality

import (
	"context"
	"errors"
	"io"
	"iter"
	"strconv"
	"time"

	runtimev1 "github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1"
	"google.golang.org/grpc/codes"
)

// watchSettings say how hard [Client.Watch] tries to resume a dropped stream.
type watchSettings struct {
	// reconnects is how many failed reconnects in a row it tolerates before giving up.
	reconnects int
	// backoff is the pause before the first reconnect; it doubles up to maxBackoff.
	backoff, maxBackoff time.Duration
}

var defaultWatchSettings = watchSettings{reconnects: 5, backoff: 100 * time.Millisecond, maxBackoff: 2 * time.Second}

// WithWatchReconnects sets how many failed reconnects in a row [Client.Watch] tolerates before
// it yields the error (default 5), and the pause before the first one (doubling up to 2 s;
// default 100 ms).
func WithWatchReconnects(reconnects int, backoff time.Duration) Option {
	return func(o *dialOptions) {
		o.watch.reconnects = max(reconnects, 0)
		if backoff > 0 {
			o.watch.backoff = backoff
		}
	}
}

// Watch yields the events of one execution (its root and node tasks' events, runtime events
// and metrics about it, heartbeats left out) from now until the root task's COMPLETED, FAILED
// or CANCELLED event, which is the last one yielded. It yields nothing when the execution has
// already ended. It uses one server stream (EventService.SubscribeEvents, never polling) and
// resumes it after the last sequence seen when it drops (UNAVAILABLE, a reset connection, or
// RESOURCE_EXHAUSTED for a subscriber that fell behind), with no gap and no duplicate; after
// a few failed reconnects in a row it yields the error. An unknown id yields a NOT_FOUND
// [*Error]. Stop early by breaking out of the loop.
func (c *Client) Watch(ctx context.Context, id string) iter.Seq2[*Event, error] {
	return func(yield func(*Event, error) bool) {
		w := watcher{client: c, id: id}
		defer w.close()
		if err := w.run(ctx, yield); err != nil {
			yield(nil, err)
		}
	}
}

// Wait follows an execution to its end (as [Client.Watch] does) and returns it then.
func (c *Client) Wait(ctx context.Context, id string) (*Execution, error) {
	for _, err := range c.Watch(ctx, id) {
		if err != nil {
			return nil, err
		}
	}
	return c.Get(ctx, id)
}

type eventStream = interface {
	Recv() (*runtimev1.SubscribeEventsResponse, error)
}

type watcher struct {
	client *Client
	id     string
	// rootTaskID is the execution's WORKFLOW task: its terminal event ends the watch.
	rootTaskID string
	// last is the last sequence seen (an event's or a heartbeat's) when seen is true.
	last uint64
	seen bool
	// failures counts reconnects since the last item received.
	failures int
	// cancel ends the current stream.
	cancel context.CancelFunc
}

func (w *watcher) close() {
	if w.cancel != nil {
		w.cancel()
		w.cancel = nil
	}
}

// open subscribes (after the last sequence seen, or from now) and waits until the stream is
// established (its response headers arrived), so no event published afterwards is missed.
func (w *watcher) open(ctx context.Context) (eventStream, error) {
	w.close()
	streamCtx, cancel := context.WithCancel(ctx)
	request := &runtimev1.SubscribeEventsRequest{
		ExecutionIds:      []string{w.id},
		IncludeNodeEvents: true,
	}
	if w.seen {
		after := w.last
		request.AfterSequence = &after
	}
	stream, err := w.client.events.SubscribeEvents(streamCtx, request)
	if err != nil {
		cancel()
		return nil, err
	}
	if _, err := stream.Header(); err != nil {
		cancel()
		return nil, streamError(err, stream)
	}
	w.cancel = cancel
	return stream, nil
}

// start opens a stream from now and checks the execution: done is true when it has already
// ended.
func (w *watcher) start(ctx context.Context) (stream eventStream, done bool, err error) {
	stream, err = w.open(ctx)
	if err != nil {
		return nil, false, err
	}
	execution, err := w.client.Get(ctx, w.id)
	if err != nil {
		return nil, false, err
	}
	w.rootTaskID = execution.GetRootTaskId()
	return stream, IsTerminal(execution.GetStatus()), nil
}

func (w *watcher) run(ctx context.Context, yield func(*Event, error) bool) error {
	stream, done, err := w.start(ctx)
	if err != nil || done {
		return err
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			stream, done, err = w.reconnect(ctx, err)
			if err != nil || done {
				return err
			}
			continue
		}
		w.failures = 0
		switch item := response.GetItem().(type) {
		case *runtimev1.SubscribeEventsResponse_Heartbeat:
			w.last, w.seen = item.Heartbeat.GetLastSequence(), true
		case *runtimev1.SubscribeEventsResponse_Event:
			event := item.Event
			if w.seen && event.GetSequence() <= w.last {
				continue // already yielded before a reconnect
			}
			w.last, w.seen = event.GetSequence(), true
			if !yield(event, nil) {
				return nil
			}
			if w.isEnd(event) {
				return nil
			}
		}
	}
}

// isEnd reports whether event is the root task's terminal event.
func (w *watcher) isEnd(event *Event) bool {
	taskEvent := event.GetTaskEvent()
	if taskEvent == nil {
		return false
	}
	switch taskEvent.GetEventType() {
	case runtimev1.TaskEventType_TASK_EVENT_TYPE_COMPLETED,
		runtimev1.TaskEventType_TASK_EVENT_TYPE_FAILED,
		runtimev1.TaskEventType_TASK_EVENT_TYPE_CANCELLED:
	default:
		return false
	}
	if w.rootTaskID == "" {
		return !event.GetNode()
	}
	return taskEvent.GetTaskId() == w.rootTaskID
}

// reconnect reopens a dropped stream after the last sequence seen, a few times with backoff
// (counted from the last item received, so a stream that drops at once again counts too).
// Without any sequence seen yet it starts over from now and checks the execution again (done
// when it ended meanwhile).
func (w *watcher) reconnect(ctx context.Context, dropped error) (eventStream, bool, error) {
	err := dropped
	if !errors.Is(err, io.EOF) {
		err = wrapError(err, nil)
	}
	for {
		if ctx.Err() != nil || !resumable(err) || w.failures >= w.client.watch.reconnects {
			if errors.Is(err, io.EOF) {
				return nil, false, io.ErrUnexpectedEOF
			}
			return nil, false, err
		}
		if !w.seen {
			if resume, ok := resumeSequence(err); ok {
				w.last, w.seen = resume, true
			}
		}
		pause := w.client.watch.backoff << min(w.failures, 16)
		pause = min(pause, max(w.client.watch.maxBackoff, w.client.watch.backoff))
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, false, wrapError(ctx.Err(), nil)
		case <-timer.C:
		}
		w.failures++
		var stream eventStream
		var done bool
		if w.seen {
			stream, err = w.open(ctx)
		} else {
			stream, done, err = w.start(ctx)
		}
		if err == nil {
			return stream, done, nil
		}
	}
}

// resumable reports whether a stream that ended with err is worth reopening.
func resumable(err error) bool {
	if errors.Is(err, io.EOF) {
		return true // the server closed a stream that never ends on its own
	}
	switch Code(err) {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	default:
		return false
	}
}

// resumeSequence is the ErrorInfo metadata last_sequence of a stream that ended early.
func resumeSequence(err error) (uint64, bool) {
	e := FromError(err)
	if e == nil {
		return 0, false
	}
	value, ok := e.Metadata["last_sequence"]
	if !ok {
		return 0, false
	}
	sequence, parseErr := strconv.ParseUint(value, 10, 64)
	return sequence, parseErr == nil
}
