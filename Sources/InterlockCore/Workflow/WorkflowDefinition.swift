public import InterlockPolicy

/// A declared workflow: the graph an architect fixed, which agents and tools carry out step by
/// step. Built by the workflow loader from YAML, so everything here has passed validation
/// (ids unique, every `next`/`on_error` target exists in its sequence, every `reads` names
/// an earlier step, every template type-checks).
public struct WorkflowDefinition: Sendable {
    public var name: String
    public var description: String
    /// The registered agent whose identity and grants the steps run under, unless a step
    /// names its own.
    public var agentID: String
    public var inputSchema: JSONSchema?
    /// The run's output: a template over the steps it reads (nil: the last step's output).
    public var output: WorkflowTemplate?
    public var outputReads: [String]
    public var outputSchema: JSONSchema?
    public var budgets: RunBudgetLimits
    public var triggers: [WorkflowTrigger]
    /// Queue priority of its runs (higher first).
    public var priority: Int
    public var steps: [WorkflowStep]
    /// The YAML it was read from and its SHA-256: a run keeps the definition it started with,
    /// whatever the configuration says later.
    public var source: String
    public var hash: String

    public init(
        name: String, description: String = "", agentID: String, inputSchema: JSONSchema? = nil, output: WorkflowTemplate? = nil, outputReads: [String] = [],
        outputSchema: JSONSchema? = nil, budgets: RunBudgetLimits = .init(), triggers: [WorkflowTrigger] = [], priority: Int = 0, steps: [WorkflowStep],
        source: String = "", hash: String = ""
    ) {
        self.name = name
        self.description = description
        self.agentID = agentID
        self.inputSchema = inputSchema
        self.output = output
        self.outputReads = outputReads
        self.outputSchema = outputSchema
        self.budgets = budgets
        self.triggers = triggers
        self.priority = priority
        self.steps = steps
        self.source = source
        self.hash = hash
    }

    /// The ids of the `parallel` and `map` steps (they run no work of their own).
    public var containerIDs: Set<String> {
        var ids: Set<String> = []
        func collect(_ steps: [WorkflowStep]) {
            for step in steps where !step.kind.sequences.isEmpty {
                ids.insert(step.id)
                for sequence in step.kind.sequences { collect(sequence.steps) }
            }
        }
        collect(steps)
        return ids
    }

    /// Every step, nested ones included, by id (ids are unique across the workflow).
    public func step(_ id: String) -> WorkflowStep? {
        func find(_ steps: [WorkflowStep]) -> WorkflowStep? {
            for step in steps {
                if step.id == id { return step }
                for sequence in step.kind.sequences { if let found = find(sequence.steps) { return found } }
            }
            return nil
        }
        return find(steps)
    }
}

/// Limits over everything a run does: its steps, and the model and tool calls of every step
/// and sub-step. Nil is no limit.
public struct RunBudgetLimits: Sendable, Equatable {
    public var maxSteps: Int?
    public var maxModelCalls: Int?
    public var maxToolCalls: Int?
    public var maxTokens: Int?
    public var maxCost: USD?
    public var maxWallTimeMs: Int64?

    public init(maxSteps: Int? = nil, maxModelCalls: Int? = nil, maxToolCalls: Int? = nil, maxTokens: Int? = nil, maxCost: USD? = nil, maxWallTimeMs: Int64? = nil) {
        self.maxSteps = maxSteps
        self.maxModelCalls = maxModelCalls
        self.maxToolCalls = maxToolCalls
        self.maxTokens = maxTokens
        self.maxCost = maxCost
        self.maxWallTimeMs = maxWallTimeMs
    }

    /// The limits as the runs API shows them, by their config keys.
    public var json: JSONValue {
        var object = JSONObject()
        if let maxSteps { object["max_steps"] = .integer(Int64(maxSteps)) }
        if let maxModelCalls { object["max_model_calls"] = .integer(Int64(maxModelCalls)) }
        if let maxToolCalls { object["max_tool_calls"] = .integer(Int64(maxToolCalls)) }
        if let maxTokens { object["max_tokens"] = .integer(Int64(maxTokens)) }
        if let maxCost { object["max_usd"] = .number(maxCost.dollars) }
        if let maxWallTimeMs { object["max_wall_time_ms"] = .integer(maxWallTimeMs) }
        return .object(object)
    }
}

/// An event that starts a run: its type, an optional CEL condition over `event`, and the
/// run's input built from the event (default: the event's payload).
public struct WorkflowTrigger: Sendable {
    public var eventType: String
    public var condition: CELProgram?
    public var input: WorkflowTemplate?

    public init(eventType: String, condition: CELProgram? = nil, input: WorkflowTemplate? = nil) {
        self.eventType = eventType
        self.condition = condition
        self.input = input
    }
}

/// One node of the graph.
public struct WorkflowStep: Sendable {
    public var id: String
    public var kind: Kind
    /// The earlier outputs (step ids, or `input`) the step sees; nothing else is bound.
    public var reads: [String]
    /// The step after this one: another step of the same sequence, or `end`. Nil: the next
    /// one in the list (the sequence ends after the last).
    public var next: String?
    /// Where a step that failed for good (retries spent) goes instead of failing its
    /// sequence: a step of the same sequence, or `end`.
    public var onError: String?
    public var retry: StepRetry
    /// Longest one attempt may take (durable waits: the longest the wait may last).
    public var timeoutMs: Int64?
    /// The registered agent whose identity this step's calls use (nil: the workflow's).
    public var agentID: String?

    public init(
        id: String, kind: Kind, reads: [String] = [], next: String? = nil, onError: String? = nil, retry: StepRetry = .standard, timeoutMs: Int64? = nil,
        agentID: String? = nil
    ) {
        self.id = id
        self.kind = kind
        self.reads = reads
        self.next = next
        self.onError = onError
        self.retry = retry
        self.timeoutMs = timeoutMs
        self.agentID = agentID
    }

    public enum Kind: Sendable {
        case agent(AgentStep)
        /// A direct tool call with arguments built from earlier outputs.
        case tool(name: String, arguments: WorkflowTemplate)
        /// Ask a human to approve; the answer (who, comment) is the output.
        case approval(message: WorkflowTemplate)
        /// Ask a human for data matching `schema`; the answer is the output.
        case input(message: WorkflowTemplate, schema: JSONSchema?)
        /// The first case whose condition holds picks the next step.
        case branch(cases: [BranchCase], otherwise: String?)
        case parallel(branches: [WorkflowSequence], maxConcurrency: Int)
        /// The body runs once per element of `items` (bound as `item`, its position as `index`).
        case map(items: WorkflowTemplate, body: WorkflowSequence, maxConcurrency: Int)
        case emit(type: String, payload: WorkflowTemplate, dedupKey: WorkflowTemplate?)
        /// Waits for an event of `type` whose `condition` (over `event` and the step's reads)
        /// holds, published after the step began — or after the event of the `emit` step named
        /// by `after` (one of the reads); the event is the output.
        case waitEvent(type: String, condition: CELProgram?, after: String?)
        case sleep(durationMs: Int64)

        public var name: String {
            switch self {
            case .agent: "agent"
            case .tool: "tool"
            case .approval: "approval"
            case .input: "input"
            case .branch: "branch"
            case .parallel: "parallel"
            case .map: "map"
            case .emit: "emit"
            case .waitEvent: "wait_event"
            case .sleep: "sleep"
            }
        }

        /// The nested sequences of a `parallel` or `map` step.
        public var sequences: [WorkflowSequence] {
            switch self {
            case .parallel(let branches, _): branches
            case .map(_, let body, _): [body]
            default: []
            }
        }

        /// Whether the step waits for something outside the run (a human, an event, time):
        /// such a step holds no worker while it waits.
        public var isDurableWait: Bool {
            switch self {
            case .approval, .input, .waitEvent, .sleep: true
            default: false
            }
        }
    }

    public struct BranchCase: Sendable {
        public var condition: CELProgram
        public var next: String

        public init(condition: CELProgram, next: String) {
            self.condition = condition
            self.next = next
        }
    }
}

/// A list of steps run in order (the workflow's own, a parallel branch, a map body).
public struct WorkflowSequence: Sendable {
    public var name: String
    public var steps: [WorkflowStep]

    public init(name: String, steps: [WorkflowStep]) {
        self.name = name
        self.steps = steps
    }

    /// The step after `step` when it names none: the next in the list, or nil (the end).
    public func following(_ id: String) -> String? {
        guard let index = steps.firstIndex(where: { $0.id == id }), index + 1 < steps.count else { return nil }
        return steps[index + 1].id
    }

    public func step(_ id: String) -> WorkflowStep? { steps.first { $0.id == id } }
}

/// The built-in LLM agent of an `agent` step.
public struct AgentStep: Sendable {
    /// The system prompt; may use the step's reads.
    public var instructions: WorkflowTemplate
    /// The user message (default: the step's reads as JSON).
    public var prompt: WorkflowTemplate?
    public var model: String
    /// Tools the agent may call (each also needs the agent's grant).
    public var tools: [String]
    public var outputSchema: JSONSchema?
    /// Model turns at most, tool rounds included.
    public var maxIterations: Int
    /// How many times an output that does not validate is sent back with the error.
    public var maxOutputRetries: Int
    public var maxOutputTokens: Int?

    public init(
        instructions: WorkflowTemplate, prompt: WorkflowTemplate? = nil, model: String, tools: [String] = [], outputSchema: JSONSchema? = nil,
        maxIterations: Int = 10, maxOutputRetries: Int = 2, maxOutputTokens: Int? = nil
    ) {
        self.instructions = instructions
        self.prompt = prompt
        self.model = model
        self.tools = tools
        self.outputSchema = outputSchema
        self.maxIterations = maxIterations
        self.maxOutputRetries = maxOutputRetries
        self.maxOutputTokens = maxOutputTokens
    }
}

/// How a step's failed attempts are tried again: attempts (the first included), exponential
/// backoff with jitter, and which error codes are worth another attempt.
public struct StepRetry: Sendable, Equatable {
    public var maxAttempts: Int
    public var initialBackoffMs: Int
    public var maxBackoffMs: Int
    /// Error codes retried: nil retries transient failures (`StepError.retryable`); a list
    /// retries exactly the codes it names (`*`: every transient failure).
    public var retryOn: Set<String>?

    public init(maxAttempts: Int, initialBackoffMs: Int = 1_000, maxBackoffMs: Int = 60_000, retryOn: Set<String>? = nil) {
        self.maxAttempts = maxAttempts
        self.initialBackoffMs = initialBackoffMs
        self.maxBackoffMs = maxBackoffMs
        self.retryOn = retryOn
    }

    public static let none = StepRetry(maxAttempts: 1)
    /// A step that names no `retry`: transient failures (timeouts, upstream errors, rate
    /// limits) get two more attempts, 1 s then about 2 s later.
    public static let standard = StepRetry(maxAttempts: 3, initialBackoffMs: 1_000, maxBackoffMs: 60_000)

    /// Whether an attempt that failed with `error` is tried again.
    public func retries(_ error: StepError, afterAttempt attempt: Int) -> Bool {
        guard attempt < maxAttempts else { return false }
        guard let retryOn else { return error.retryable }
        return retryOn.contains(error.code) || (retryOn.contains("*") && error.retryable)
    }

    /// The wait after failed attempt `attempt`, in milliseconds.
    public func backoffMs(afterAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Int64 {
        let policy = RetryPolicy(maxAttempts: maxAttempts, initialBackoffMs: initialBackoffMs, maxBackoffMs: maxBackoffMs)
        let wait = policy.backoff(afterAttempt: attempt, using: &generator).components
        return wait.seconds * 1_000 + wait.attoseconds / 1_000_000_000_000_000
    }
}
