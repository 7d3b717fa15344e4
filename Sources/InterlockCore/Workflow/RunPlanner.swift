/// What a run does next, read from its state and its definition at a given time. Pure: the
/// worker performs the actions (each one a checkpoint in the store) and asks again.
public struct RunPlan: Sendable {
    public var actions: [RunAction] = []
    /// The earliest time something becomes due (a retry, a deadline, the wall-time budget);
    /// nil when only an outside signal (an answer, an event, an operator) can move the run.
    public var wakeAtMs: Int64?

    /// Nothing runs or can run now: every open step waits.
    public var isIdle: Bool { actions.allSatisfy { if case .checkWait = $0 { true } else { false } } }

    mutating func wake(at ms: Int64) {
        wakeAtMs = min(wakeAtMs ?? ms, ms)
    }
}

/// A step attempt the worker is to carry out, with everything it may read.
public struct StepTask: Sendable {
    public var path: String
    public var step: WorkflowStep
    public var attempt: Int
    /// The step's declared reads (and `item`/`index` in a map body), as JSON.
    public var bindings: [String: JSONValue]
    /// The attempt was begun before (a crash interrupted it): no new `step_started`, same
    /// idempotency key.
    public var resumed: Bool
    /// Agent checkpoints of this attempt so far.
    public var turns: [JSONValue]
}

public enum RunAction: Sendable {
    /// Begin (or resume) an attempt. A container (`parallel`, `map`) only records its start
    /// (a map, its items); its children come in later plans.
    case start(StepTask)
    /// See whether what a waiting step waits for has come (or its deadline passed).
    case checkWait(StepTask, StepWait)
    /// A container's children all finished: its output is theirs, joined.
    case completeStep(path: String, output: JSONValue)
    /// A child of a container failed for good: so does the container.
    case failStep(path: String, attempt: Int, error: StepError)
    /// The workflow's steps are done: `bindings` hold the output's reads, `last` the last
    /// step's output (the run's output when the workflow declares none).
    case completeRun(bindings: [String: JSONValue], last: JSONValue)
    case failRun(StepError)
    case stopByBudget(limit: String, message: String)
}

/// Reads the definition with a run's state.
public struct RunPlanner: Sendable {
    public let definition: WorkflowDefinition

    public init(definition: WorkflowDefinition) {
        self.definition = definition
    }

    /// What the run does next at `nowMs`.
    public func plan(_ state: RunState, nowMs: Int64) -> RunPlan {
        var plan = RunPlan()
        guard !state.status.isTerminal, state.status != .queued else { return plan }
        if let maxWall = state.budgets.maxWallTimeMs {
            let deadline = state.startedMs + maxWall
            if nowMs >= deadline {
                plan.actions = [.stopByBudget(limit: "max_wall_time_ms", message: "The run has used its wall time of \(maxWall) ms.")]
                return plan
            }
            plan.wake(at: deadline)
        }
        var walker = Walker(state: state, nowMs: nowMs, plan: plan)
        let top = WorkflowSequence(name: "", steps: definition.steps)
        switch walker.walk(top, prefix: "", scope: Scope()) {
        case .active:
            break
        case .done(let last, let scope):
            if walker.plan.actions.isEmpty {
                walker.plan.actions = [.completeRun(bindings: scope.bindings(definition.outputReads, state: state), last: last ?? .null)]
            }
        case .failed(let error):
            walker.plan.actions.append(.failRun(error))
        }
        if walker.stopForSteps, let maxSteps = state.budgets.maxSteps {
            // Nothing new may begin: the in-flight work is checkpointed, then the run stops.
            walker.plan.actions = [.stopByBudget(limit: "max_steps", message: "The run has begun its \(maxSteps) steps allowed (max_steps).")]
        }
        return walker.plan
    }

    /// What a step reads: the newest visit of each step id seen so far, outer sequences
    /// included, and the `item`/`index` of the map body it is in.
    struct Scope {
        var latest: [String: String] = [:]
        var extra: [String: JSONValue] = [:]

        func bindings(_ reads: [String], state: RunState) -> [String: JSONValue] {
            var bindings = extra
            for read in reads {
                if read == "input" {
                    bindings["input"] = state.input
                    continue
                }
                guard let path = latest[read], let step = state.steps[path] else {
                    bindings[read] = .null
                    continue
                }
                switch step.phase {
                case .completed: bindings[read] = step.output ?? .null
                case .failed: bindings[read] = ["error": step.error?.json ?? .null]
                default: bindings[read] = .null
                }
            }
            return bindings
        }
    }

    enum Progress {
        case active
        case done(JSONValue?, Scope)
        case failed(StepError)
    }

    struct Walker {
        let state: RunState
        let nowMs: Int64
        var plan: RunPlan
        /// A new step would pass `max_steps`.
        var stopForSteps = false
        var newStarts = 0

        /// Follows one sequence from its first step through the steps already finished, and
        /// plans the one it stands at.
        mutating func walk(_ sequence: WorkflowSequence, prefix: String, scope: Scope) -> Progress {
            var scope = scope
            var cursor = sequence.steps.first?.id
            var visits: [String: Int] = [:]
            var last: JSONValue?
            while let id = cursor, let step = sequence.step(id) {
                let visit = (visits[id] ?? 0) + 1
                visits[id] = visit
                let path = prefix + id + (visit > 1 ? "#\(visit)" : "")
                guard let current = state.steps[path] else {
                    begin(step, path: path, attempt: 1, scope: scope, resumed: false, isNew: true)
                    return .active
                }
                scope.latest[id] = path
                switch current.phase {
                case .completed:
                    last = current.output
                    cursor = next(after: step, in: sequence, output: current.output)
                case .failed:
                    guard let target = step.onError else { return .failed(current.error ?? StepError(code: "failed", message: "Step '\(path)' failed.")) }
                    last = nil
                    cursor = target == "end" ? nil : target
                case .running:
                    if step.kind.sequences.isEmpty {
                        begin(step, path: path, attempt: current.attempt, scope: scope, resumed: true, isNew: false)
                    } else {
                        container(step, path: path, attempt: current.attempt, scope: scope, data: current.data)
                    }
                    return .active
                case .retrying(let at):
                    if !step.kind.sequences.isEmpty {
                        // A container sent on by an operator's retry: its failed children are retried.
                        container(step, path: path, attempt: current.attempt, scope: scope, data: current.data)
                    } else if at <= nowMs {
                        begin(step, path: path, attempt: current.attempt + 1, scope: scope, resumed: false, isNew: false)
                    } else {
                        plan.wake(at: at)
                    }
                    return .active
                case .waiting(let wait):
                    plan.actions.append(.checkWait(task(step, path: path, attempt: current.attempt, scope: scope, resumed: true), wait))
                    if let deadline = wait.deadlineMs { plan.wake(at: deadline) }
                    return .active
                }
            }
            return .done(last, scope)
        }

        func next(after step: WorkflowStep, in sequence: WorkflowSequence, output: JSONValue?) -> String? {
            if case .branch = step.kind {
                let target = output?["next"]?.stringValue
                return target == "end" ? nil : target
            }
            if let next = step.next { return next == "end" ? nil : next }
            return sequence.following(step.id)
        }

        func task(_ step: WorkflowStep, path: String, attempt: Int, scope: Scope, resumed: Bool) -> StepTask {
            StepTask(
                path: path, step: step, attempt: attempt, bindings: scope.bindings(step.reads, state: state), resumed: resumed,
                turns: resumed ? state.steps[path]?.turns ?? [] : [])
        }

        mutating func begin(_ step: WorkflowStep, path: String, attempt: Int, scope: Scope, resumed: Bool, isNew: Bool) {
            // A paused run begins nothing, not even an attempt a crash interrupted.
            if state.paused { return }
            if isNew {
                if let maxSteps = state.budgets.maxSteps, state.stepsStarted + newStarts >= maxSteps {
                    stopForSteps = true
                    return
                }
                newStarts += 1
            }
            plan.actions.append(.start(task(step, path: path, attempt: attempt, scope: scope, resumed: resumed)))
        }

        /// A started `parallel` or `map`: walks its children (at most `maxConcurrency` of
        /// them open at once) and joins them when all are done.
        mutating func container(_ step: WorkflowStep, path: String, attempt: Int, scope: Scope, data: JSONValue?) {
            var children: [(sequence: WorkflowSequence, prefix: String, scope: Scope)] = []
            let limit: Int
            switch step.kind {
            case .parallel(let branches, let maxConcurrency):
                limit = maxConcurrency
                for branch in branches { children.append((branch, "\(path).\(branch.name)/", scope)) }
            case .map(_, let body, let maxConcurrency):
                limit = maxConcurrency
                for (index, item) in (data?.arrayValue ?? []).enumerated() {
                    var childScope = scope
                    childScope.extra["item"] = item
                    childScope.extra["index"] = .integer(Int64(index))
                    children.append((body, "\(path)[\(index)]/", childScope))
                }
            default:
                preconditionFailure("only parallel and map steps have children")
            }
            let planned = plan.actions.count
            var open = 0
            var outputs: [JSONValue] = []
            var failure: StepError?
            var allDone = true
            for child in children {
                let begun = child.sequence.steps.first.map { state.steps[child.prefix + $0.id] != nil } ?? true
                if !begun, open >= limit {
                    allDone = false
                    continue
                }
                switch walk(child.sequence, prefix: child.prefix, scope: child.scope) {
                case .active:
                    open += 1
                    allDone = false
                case .done(let last, _):
                    outputs.append(last ?? .null)
                case .failed(let error):
                    failure = failure ?? error
                }
            }
            if let failure {
                // The other children stop: nothing more of theirs begins.
                plan.actions.removeSubrange(planned...)
                plan.actions.append(.failStep(path: path, attempt: attempt, error: failure))
                return
            }
            guard allDone else { return }
            switch step.kind {
            case .parallel(let branches, _):
                var joined = JSONObject()
                for (branch, output) in zip(branches, outputs) { joined[branch.name] = output }
                plan.actions.append(.completeStep(path: path, output: .object(joined)))
            default:
                plan.actions.append(.completeStep(path: path, output: .array(outputs)))
            }
        }
    }
}
