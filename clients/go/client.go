// Package comfyreality is the Go client of comfy-reality, the gRPC runtime in front of
// ComfyUI: run workflows, follow them as they run, and download what they produced.
//
//	client, err := comfyreality.Dial(ctx, "127.0.0.1:50051")
//	...
//	defer client.Close()
//	execution, err := client.Execute(ctx, workflow, comfyreality.WithTags("demo"))
//	for event, err := range client.Watch(ctx, execution.GetId()) { ... }
//	execution, err = client.Get(ctx, execution.GetId())
//	err = client.Download(ctx, execution.GetId(), execution.GetArtifacts()[0], file)
//
// The messages are the generated ones of package
// github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1 ([Execution]
// and [Event] are aliases); [Client.Conn] gives the connection for the generated service
// clients when a method is not wrapped here. Errors from the server are [*Error].
package comfyreality

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"iter"

	runtimev1 "github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// Execution is one run of a workflow, with its tasks, outputs and artifacts.
type Execution = runtimev1.WorkflowExecution

// Event is one numbered event of the runtime (a task event, a runtime event or a metric).
type Event = runtimev1.Event

// TaskPriority is an execution's priority (LOW < NORMAL < HIGH < CRITICAL).
type TaskPriority = runtimev1.TaskPriority

// TaskStatus is the state of an execution or task.
type TaskStatus = runtimev1.TaskStatus

// Priorities for [WithPriority].
const (
	PriorityLow      = runtimev1.TaskPriority_TASK_PRIORITY_LOW
	PriorityNormal   = runtimev1.TaskPriority_TASK_PRIORITY_NORMAL
	PriorityHigh     = runtimev1.TaskPriority_TASK_PRIORITY_HIGH
	PriorityCritical = runtimev1.TaskPriority_TASK_PRIORITY_CRITICAL
)

// Statuses of executions and tasks.
const (
	StatusPending   = runtimev1.TaskStatus_TASK_STATUS_PENDING
	StatusQueued    = runtimev1.TaskStatus_TASK_STATUS_QUEUED
	StatusRunning   = runtimev1.TaskStatus_TASK_STATUS_RUNNING
	StatusCompleted = runtimev1.TaskStatus_TASK_STATUS_COMPLETED
	StatusFailed    = runtimev1.TaskStatus_TASK_STATUS_FAILED
	StatusCancelled = runtimev1.TaskStatus_TASK_STATUS_CANCELLED
	StatusRetrying  = runtimev1.TaskStatus_TASK_STATUS_RETRYING
)

// IsTerminal reports whether status is COMPLETED, FAILED or CANCELLED.
func IsTerminal(status TaskStatus) bool {
	switch status {
	case StatusCompleted, StatusFailed, StatusCancelled:
		return true
	default:
		return false
	}
}

// Client talks to one comfy-reality server. It is safe for concurrent use.
type Client struct {
	conn       *grpc.ClientConn
	executions runtimev1.ExecutionServiceClient
	events     runtimev1.EventServiceClient
	health     healthpb.HealthClient
	watch      watchSettings
}

// Option configures [Dial].
type Option func(*dialOptions)

type dialOptions struct {
	apiKey      string
	tls         *tls.Config
	grpcOptions []grpc.DialOption
	watch       watchSettings
}

// WithAPIKey sends `authorization: Bearer <key>` on every call.
func WithAPIKey(key string) Option {
	return func(o *dialOptions) { o.apiKey = key }
}

// WithTLS connects over TLS with this configuration (nil: the system's roots). Without it the
// connection is plaintext.
func WithTLS(config *tls.Config) Option {
	return func(o *dialOptions) {
		if config == nil {
			config = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tls = config
	}
}

// WithDialOptions adds gRPC dial options (interceptors, keepalive, ...).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(o *dialOptions) { o.grpcOptions = append(o.grpcOptions, options...) }
}

// Dial creates a client for the server at address ("host:port", or any gRPC target such as
// "dns:///host:port"). It does not wait for the connection: the first call connects. ctx is
// only checked, not kept.
func Dial(ctx context.Context, address string, options ...Option) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	settings := dialOptions{watch: defaultWatchSettings}
	for _, option := range options {
		option(&settings)
	}
	transport := insecure.NewCredentials()
	if settings.tls != nil {
		transport = credentials.NewTLS(settings.tls)
	}
	grpcOptions := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithChainUnaryInterceptor(unaryInterceptor(settings.apiKey)),
		grpc.WithChainStreamInterceptor(streamInterceptor(settings.apiKey)),
	}
	grpcOptions = append(grpcOptions, settings.grpcOptions...)
	conn, err := grpc.NewClient(address, grpcOptions...)
	if err != nil {
		return nil, fmt.Errorf("comfyreality: dial %s: %w", address, err)
	}
	return &Client{
		conn:       conn,
		executions: runtimev1.NewExecutionServiceClient(conn),
		events:     runtimev1.NewEventServiceClient(conn),
		health:     healthpb.NewHealthClient(conn),
		watch:      settings.watch,
	}, nil
}

// unaryInterceptor adds the API key and turns errors into *Error (with the retry-after
// header, which arrives in the headers or trailers).
func unaryInterceptor(apiKey string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		if apiKey != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
		}
		var header, trailer metadata.MD
		opts = append(opts, grpc.Header(&header), grpc.Trailer(&trailer))
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
			return wrapError(err, metadata.Join(header, trailer))
		}
		return nil
	}
}

// streamInterceptor adds the API key to streaming calls.
func streamInterceptor(apiKey string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption,
	) (grpc.ClientStream, error) {
		if apiKey != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
		}
		stream, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, wrapError(err, nil)
		}
		return stream, nil
	}
}

// streamError turns a stream's error into an *Error (io.EOF stays as it is).
func streamError(err error, stream grpc.ClientStream) error {
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	var md metadata.MD
	if stream != nil {
		md = stream.Trailer()
	}
	return wrapError(err, md)
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Conn returns the connection, for the generated clients of the services this package does
// not wrap (runtimev1.NewTaskServiceClient(client.Conn()), ...).
func (c *Client) Conn() *grpc.ClientConn {
	return c.conn
}

// Get returns one execution with its tasks.
func (c *Client) Get(ctx context.Context, id string) (*Execution, error) {
	response, err := c.executions.GetExecution(ctx, &runtimev1.GetExecutionRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return response.GetExecution(), nil
}

// Cancel cancels an execution; reason (may be empty) is kept as the root task's progress
// message. The answer is CANCELLED, or still RUNNING until ComfyUI confirms the interrupt
// ([Client.Wait] for the end). Cancelling a finished execution returns it unchanged.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*Execution, error) {
	request := &runtimev1.CancelExecutionRequest{Id: id}
	if reason != "" {
		request.Reason = &reason
	}
	response, err := c.executions.CancelExecution(ctx, request)
	if err != nil {
		return nil, err
	}
	return response.GetExecution(), nil
}

// ListOption filters [Client.List]. [WithTags] is one too.
type ListOption interface {
	applyList(*runtimev1.ListExecutionsRequest)
}

type listOptionFunc func(*runtimev1.ListExecutionsRequest)

func (f listOptionFunc) applyList(r *runtimev1.ListExecutionsRequest) { f(r) }

// WithStatuses lists only executions in one of these states.
func WithStatuses(statuses ...TaskStatus) ListOption {
	return listOptionFunc(func(r *runtimev1.ListExecutionsRequest) {
		r.Statuses = append(r.Statuses, statuses...)
	})
}

// WithWorkflowID lists only executions of this registered workflow.
func WithWorkflowID(id string) ListOption {
	return listOptionFunc(func(r *runtimev1.ListExecutionsRequest) { r.WorkflowId = &id })
}

// WithPageSize sets how many executions each call fetches (0: the server's 100; at most 1000).
// List still yields every page.
func WithPageSize(size uint32) ListOption {
	return listOptionFunc(func(r *runtimev1.ListExecutionsRequest) { r.PageSize = size })
}

// List yields every matching execution, oldest first, fetching page after page. It stops at
// the first error, which it yields.
func (c *Client) List(ctx context.Context, options ...ListOption) iter.Seq2[*Execution, error] {
	return func(yield func(*Execution, error) bool) {
		request := &runtimev1.ListExecutionsRequest{}
		for _, option := range options {
			option.applyList(request)
		}
		for {
			response, err := c.executions.ListExecutions(ctx, request)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, execution := range response.GetExecutions() {
				if !yield(execution, nil) {
					return
				}
			}
			if response.GetNextPageToken() == "" {
				return
			}
			request.PageToken = response.GetNextPageToken()
		}
	}
}

// Download writes one of an execution's artifacts (an entry of its `artifacts`, exactly) to w.
func (c *Client) Download(ctx context.Context, executionID, artifactPath string, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.executions.GetArtifact(ctx, &runtimev1.GetArtifactRequest{
		ExecutionId: executionID,
		Path:        artifactPath,
	})
	if err != nil {
		return err
	}
	var written uint64
	var size *uint64
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return streamError(err, stream)
		}
		if chunk.Size != nil && size == nil {
			size = chunk.Size
		}
		if _, err := w.Write(chunk.GetData()); err != nil {
			return fmt.Errorf("comfyreality: write %s: %w", artifactPath, err)
		}
		written += uint64(len(chunk.GetData()))
	}
	if size != nil && *size != written {
		return fmt.Errorf("comfyreality: %s: got %d bytes, the server announced %d", artifactPath, written, *size)
	}
	return nil
}

// Health returns the serving status of a service ("" for the server as a whole, "liveness",
// "readiness", or a service name such as "comfyreality.runtime.v1.ExecutionService"):
// "SERVING", "NOT_SERVING", ...
func (c *Client) Health(ctx context.Context, service string) (string, error) {
	response, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return "", err
	}
	return response.GetStatus().String(), nil
}
