package comfyreality

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"

	runtimev1 "github.com/comfy-reality/comfy-reality/clients/go/gen/comfyreality/runtime/v1"
)

// WorkflowRef names a registered workflow for [Client.Execute].
type WorkflowRef struct {
	// ID is the workflow's id.
	ID string
	// Version is a semver version; empty means the highest registered one.
	Version string
}

// ExecuteOption configures [Client.Execute].
type ExecuteOption interface {
	applyExecute(*runtimev1.ExecuteWorkflowRequest) error
}

type executeOptionFunc func(*runtimev1.ExecuteWorkflowRequest) error

func (f executeOptionFunc) applyExecute(r *runtimev1.ExecuteWorkflowRequest) error { return f(r) }

// WithPriority sets the execution's priority (unset: NORMAL).
func WithPriority(priority TaskPriority) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		r.Priority = &priority
		return nil
	})
}

// TagsOption is [WithTags]: an [ExecuteOption] (tags of the new execution) and a [ListOption]
// (only executions with all of these tags).
type TagsOption []string

func (t TagsOption) applyExecute(r *runtimev1.ExecuteWorkflowRequest) error {
	r.Tags = append(r.Tags, t...)
	return nil
}

func (t TagsOption) applyList(r *runtimev1.ListExecutionsRequest) {
	r.Tags = append(r.Tags, t...)
}

// WithTags tags the new execution (for [Client.Execute]) or filters by tags (for
// [Client.List]).
func WithTags(tags ...string) TagsOption {
	return TagsOption(tags)
}

// WithOverride sets a literal input of one node for this execution only (a seed, a prompt
// text). value is an int, int8..int64, uint, uint8..uint64 (kept exact: a seed
// 18446744073709551615 arrives as such), float32/float64 (finite), json.Number, string or bool.
// An override never replaces a link.
func WithOverride(node, input string, value any) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		v, err := inputValue(value)
		if err != nil {
			return fmt.Errorf("comfyreality: override %s.%s: %w", node, input, err)
		}
		if r.Overrides == nil {
			r.Overrides = map[string]*runtimev1.NodeOverrides{}
		}
		overrides := r.Overrides[node]
		if overrides == nil {
			overrides = &runtimev1.NodeOverrides{Inputs: map[string]*runtimev1.InputValue{}}
			r.Overrides[node] = overrides
		}
		overrides.Inputs[input] = v
		return nil
	})
}

func inputValue(value any) (*runtimev1.InputValue, error) {
	signed := func(v int64) *runtimev1.InputValue {
		return &runtimev1.InputValue{Kind: &runtimev1.InputValue_IntValue{IntValue: v}}
	}
	unsigned := func(v uint64) *runtimev1.InputValue {
		return &runtimev1.InputValue{Kind: &runtimev1.InputValue_UintValue{UintValue: v}}
	}
	double := func(v float64) (*runtimev1.InputValue, error) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%v is not a finite number", v)
		}
		return &runtimev1.InputValue{Kind: &runtimev1.InputValue_DoubleValue{DoubleValue: v}}, nil
	}
	switch v := value.(type) {
	case int:
		return signed(int64(v)), nil
	case int8:
		return signed(int64(v)), nil
	case int16:
		return signed(int64(v)), nil
	case int32:
		return signed(int64(v)), nil
	case int64:
		return signed(v), nil
	case uint:
		return unsigned(uint64(v)), nil
	case uint8:
		return unsigned(uint64(v)), nil
	case uint16:
		return unsigned(uint64(v)), nil
	case uint32:
		return unsigned(uint64(v)), nil
	case uint64:
		return unsigned(v), nil
	case float32:
		return double(float64(v))
	case float64:
		return double(v)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return signed(i), nil
		}
		if u, err := strconv.ParseUint(string(v), 10, 64); err == nil {
			return unsigned(u), nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", string(v))
		}
		return double(f)
	case string:
		return &runtimev1.InputValue{Kind: &runtimev1.InputValue_StringValue{StringValue: v}}, nil
	case bool:
		return &runtimev1.InputValue{Kind: &runtimev1.InputValue_BoolValue{BoolValue: v}}, nil
	default:
		return nil, fmt.Errorf("unsupported value type %T (want an integer, float, string or bool)", value)
	}
}

// WithTimeout limits the execution's running time (greater than 0, at most 7 days; unset: the
// server's executor.task_timeout_seconds). It is not the call's deadline: use ctx for that.
func WithTimeout(timeout time.Duration) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		seconds := timeout.Seconds()
		r.TimeoutSeconds = &seconds
		return nil
	})
}

// WithMaxRetries sets how many times a transient failure is retried (0 to 100; unset: the
// server's executor.max_retries).
func WithMaxRetries(retries int) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		if retries < 0 || retries > math.MaxUint32 {
			return fmt.Errorf("comfyreality: max retries %d out of range", retries)
		}
		n := uint32(retries)
		r.MaxRetries = &n
		return nil
	})
}

// WithIdempotencyKey makes the call safe to repeat: the same key with the same body returns the
// same execution; with another body, ALREADY_EXISTS.
func WithIdempotencyKey(key string) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		r.IdempotencyKey = &key
		return nil
	})
}

// WithName names the execution's root task (unset: the workflow's name).
func WithName(name string) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		r.Name = &name
		return nil
	})
}

// WithDependencies makes the execution depend on tasks (client tasks or other executions'
// root_task_id).
func WithDependencies(dependencies ...*runtimev1.TaskDependency) ExecuteOption {
	return executeOptionFunc(func(r *runtimev1.ExecuteWorkflowRequest) error {
		r.Dependencies = append(r.Dependencies, dependencies...)
		return nil
	})
}

// Execute validates and queues a workflow and returns the new execution (PENDING, QUEUED or
// already RUNNING). workflow is an inline ComfyUI API-format graph
// ({"NODE_ID": {"class_type": ..., "inputs": {...}}}) as a map[string]any, json.RawMessage,
// []byte or string of JSON text, or a registered workflow as a [WorkflowRef] (or
// *WorkflowRef). Use [Client.Wait] or [Client.Watch] to follow it.
func (c *Client) Execute(ctx context.Context, workflow any, options ...ExecuteOption) (*Execution, error) {
	request := &runtimev1.ExecuteWorkflowRequest{}
	switch w := workflow.(type) {
	case WorkflowRef:
		request.Workflow = workflowRef(w)
	case *WorkflowRef:
		if w == nil {
			return nil, fmt.Errorf("comfyreality: nil workflow")
		}
		request.Workflow = workflowRef(*w)
	case *runtimev1.WorkflowRef:
		request.Workflow = &runtimev1.ExecuteWorkflowRequest_WorkflowRef{WorkflowRef: w}
	case map[string]any:
		text, err := json.Marshal(w)
		if err != nil {
			return nil, fmt.Errorf("comfyreality: workflow is not JSON: %w", err)
		}
		request.Workflow = &runtimev1.ExecuteWorkflowRequest_WorkflowJson{WorkflowJson: string(text)}
	case json.RawMessage:
		text, err := workflowText(w)
		if err != nil {
			return nil, fmt.Errorf("comfyreality: %w", err)
		}
		request.Workflow = &runtimev1.ExecuteWorkflowRequest_WorkflowJson{WorkflowJson: text}
	case []byte:
		text, err := workflowText(w)
		if err != nil {
			return nil, fmt.Errorf("comfyreality: %w", err)
		}
		request.Workflow = &runtimev1.ExecuteWorkflowRequest_WorkflowJson{WorkflowJson: text}
	case string:
		text, err := workflowText([]byte(w))
		if err != nil {
			return nil, fmt.Errorf("comfyreality: %w", err)
		}
		request.Workflow = &runtimev1.ExecuteWorkflowRequest_WorkflowJson{WorkflowJson: text}
	default:
		return nil, fmt.Errorf("comfyreality: unsupported workflow type %T (want map[string]any, json.RawMessage, []byte, string or WorkflowRef)", workflow)
	}
	for _, option := range options {
		if err := option.applyExecute(request); err != nil {
			return nil, err
		}
	}
	response, err := c.executions.ExecuteWorkflow(ctx, request)
	if err != nil {
		return nil, err
	}
	return response.GetExecution(), nil
}

// ExecuteFile reads a ComfyUI API-format workflow from a JSON file and executes it like
// [Client.Execute]. A file that is not a JSON object is an error before any call.
func (c *Client) ExecuteFile(ctx context.Context, path string, options ...ExecuteOption) (*Execution, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("comfyreality: read workflow: %w", err)
	}
	if _, err := workflowText(data); err != nil {
		return nil, fmt.Errorf("comfyreality: workflow file %s: %w", path, err)
	}
	return c.Execute(ctx, json.RawMessage(data), options...)
}

func workflowRef(ref WorkflowRef) *runtimev1.ExecuteWorkflowRequest_WorkflowRef {
	message := &runtimev1.WorkflowRef{Id: ref.ID}
	if ref.Version != "" {
		message.Version = &ref.Version
	}
	return &runtimev1.ExecuteWorkflowRequest_WorkflowRef{WorkflowRef: message}
}

// workflowText checks that data is one JSON object and returns it as text, unchanged (numbers
// stay exactly as written).
func workflowText(data []byte) (string, error) {
	trimmed := bytes.TrimSpace(data)
	if !json.Valid(trimmed) {
		var probe any
		err := json.Unmarshal(trimmed, &probe)
		return "", fmt.Errorf("workflow is not valid JSON: %v", err)
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return "", fmt.Errorf("workflow is not a JSON object ({\"NODE_ID\": {\"class_type\": ..., \"inputs\": {...}}})")
	}
	return string(data), nil
}
