import InterlockCore
import InterlockPolicy
import Testing

/// The run state machine: a history folded into state, read with the definition at a given
/// time (a manual clock is a number here) to say what happens next.
@Suite struct RunPlannerTests {
    /// Builds a history the way the worker appends it.
    struct History {
        var events: [RunEvent] = []
        var now: Int64 = 1_000

        mutating func add(_ kind: RunEvent.Kind) {
            events.append(RunEvent(seq: Int64(events.count + 1), timeMs: now, kind: kind))
        }

        var state: RunState { RunState(events) }
    }

    static func step(_ id: String, _ kind: WorkflowStep.Kind = .sleep(durationMs: 0), reads: [String] = [], next: String? = nil, onError: String? = nil) -> WorkflowStep {
        WorkflowStep(id: id, kind: kind, reads: reads, next: next, onError: onError)
    }

    static func starts(_ plan: RunPlan) -> [String] {
        plan.actions.compactMap { if case .start(let task) = $0 { task.path } else { nil } }
    }

    static func started(_ history: inout History, _ path: String, attempt: Int = 1, output: JSONValue) {
        history.add(.stepStarted(path: path, attempt: attempt, data: nil))
        history.add(.stepCompleted(path: path, output: output))
    }

    /// Steps begun within one millisecond keep the history's order, whatever their names
    /// (`route` before `draft`, as the procurement example runs them); time orders the rest.
    @Test func stepsInOrderFollowTheHistoryWithinAMillisecond() {
        var history = History()
        history.add(.runStarted(input: [:], budgets: .init()))
        Self.started(&history, "validate", output: [:])
        history.now += 5
        Self.started(&history, "route", output: [:])
        Self.started(&history, "draft", output: [:])
        history.now += 1
        Self.started(&history, "approve", output: [:])
        Self.started(&history, "a-send", output: [:])
        #expect(history.state.stepsInOrder.map(\.path) == ["validate", "route", "draft", "approve", "a-send"])
        // A later attempt of a step counts from when it began again.
        history.now += 1
        history.add(.stepStarted(path: "validate", attempt: 2, data: nil))
        #expect(history.state.stepsInOrder.map(\.path) == ["route", "draft", "approve", "a-send", "validate"])
    }

    @Test func stepsRunInOrderAndTheLastOutputIsTheRunsOutput() {
        let planner = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("a"), Self.step("b", reads: ["a"])]))
        var history = History()
        #expect(Self.starts(planner.plan(history.state, nowMs: 0)).isEmpty, "a queued run (no run_started) does nothing")
        history.add(.runStarted(input: ["x": 1], budgets: .init()))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["a"])
        Self.started(&history, "a", output: ["v": 7])
        let plan = planner.plan(history.state, nowMs: history.now)
        guard case .start(let task)? = plan.actions.first else { Issue.record("expected a start"); return }
        #expect(task.path == "b" && task.attempt == 1 && !task.resumed)
        #expect(task.bindings == ["a": ["v": 7]], "b reads a, and only a")
        Self.started(&history, "b", output: "done")
        guard case .completeRun(_, let last)? = planner.plan(history.state, nowMs: history.now).actions.first else {
            Issue.record("expected the run to complete")
            return
        }
        #expect(last == "done")
        history.add(.runCompleted(output: "done"))
        #expect(history.state.status == .completed)
        #expect(planner.plan(history.state, nowMs: history.now).actions.isEmpty)
    }

    @Test func anInterruptedAttemptResumesWithTheSameAttemptAndKey() {
        let planner = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("send")]))
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "send", attempt: 2, data: nil))
        guard case .start(let task)? = planner.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected a start"); return }
        #expect(task.resumed && task.attempt == 2)
        #expect(RunState.idempotencyKey(runID: "r1", path: task.path, attempt: task.attempt) == "run:r1:send:2")
    }

    @Test func aFailedAttemptWaitsForItsBackoffThenTriesAgain() {
        let planner = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("call")]))
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "call", attempt: 1, data: nil))
        history.add(.stepFailed(path: "call", attempt: 1, error: StepError(code: "timeout", message: "slow", retryable: true), retryAtMs: 5_000))
        let waiting = planner.plan(history.state, nowMs: 4_999)
        #expect(waiting.actions.isEmpty && waiting.wakeAtMs == 5_000)
        guard case .start(let task)? = planner.plan(history.state, nowMs: 5_000).actions.first else { Issue.record("expected a retry"); return }
        #expect(task.attempt == 2 && !task.resumed)
    }

    @Test func retryPolicyRetriesOnlyListedOrTransientErrors() {
        let transient = StepRetry(maxAttempts: 3)
        #expect(transient.retries(StepError(code: "timeout", message: "", retryable: true), afterAttempt: 1))
        #expect(!transient.retries(StepError(code: "timeout", message: "", retryable: true), afterAttempt: 3), "attempts spent")
        #expect(!transient.retries(StepError(code: "invalid_arguments", message: ""), afterAttempt: 1))
        let listed = StepRetry(maxAttempts: 5, retryOn: ["invalid_output"])
        #expect(listed.retries(StepError(code: "invalid_output", message: ""), afterAttempt: 1), "a listed code is retried")
        #expect(!listed.retries(StepError(code: "timeout", message: "", retryable: true), afterAttempt: 1), "a list retries only what it names")
        #expect(StepRetry(maxAttempts: 5, retryOn: ["*"]).retries(StepError(code: "x", message: "", retryable: true), afterAttempt: 1))
        var generator = SplitMix(seed: 3)
        for attempt in 1...6 {
            let wait = StepRetry(maxAttempts: 9, initialBackoffMs: 100, maxBackoffMs: 1_000).backoffMs(afterAttempt: attempt, using: &generator)
            let ceiling = min(1_000, 100 << (attempt - 1))
            #expect(wait >= Int64(ceiling / 2) && wait <= Int64(ceiling), "attempt \(attempt): \(wait)")
        }
    }

    @Test func aStepThatFailedForGoodTakesItsErrorPathOrFailsTheRun() {
        let definition = WorkflowDefinition(
            name: "w", agentID: "a", steps: [Self.step("call", onError: "recover"), Self.step("after", next: "end"), Self.step("recover", reads: ["call"])])
        let planner = RunPlanner(definition: definition)
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "call", attempt: 1, data: nil))
        history.add(.stepFailed(path: "call", attempt: 1, error: StepError(code: "approval_rejected", message: "no", retryable: false), retryAtMs: nil))
        guard case .start(let task)? = planner.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected recover"); return }
        #expect(task.path == "recover")
        #expect(task.bindings["call"]?["error"]?["code"] == "approval_rejected", "the error path sees the error")

        let strict = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("call")]))
        guard case .failRun(let error)? = strict.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected failure"); return }
        #expect(error.code == "approval_rejected")
    }

    @Test func aBranchPicksTheNextStepAndALoopVisitsAStepAgainUnderANewPath() throws {
        let condition = try CELProgram.checked("true", environment: CELEnvironment())
        let definition = WorkflowDefinition(
            name: "w", agentID: "a",
            steps: [
                Self.step("draft"), Self.step("check", .branch(cases: [.init(condition: condition, next: "draft")], otherwise: "end"), reads: ["draft"]),
            ])
        let planner = RunPlanner(definition: definition)
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        Self.started(&history, "draft", output: "v1")
        Self.started(&history, "check", output: ["next": "draft"])
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["draft#2"])
        Self.started(&history, "draft#2", output: "v2")
        let plan = planner.plan(history.state, nowMs: history.now)
        guard case .start(let task)? = plan.actions.first else { Issue.record("expected check#2"); return }
        #expect(task.path == "check#2" && task.bindings["draft"] == "v2", "the newest visit is what later steps read")
        Self.started(&history, "check#2", output: ["next": "end"])
        guard case .completeRun? = planner.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected the end"); return }
    }

    @Test func parallelBranchesRespectTheirConcurrencyAndJoin() {
        let definition = WorkflowDefinition(
            name: "w", agentID: "a",
            steps: [
                Self.step(
                    "fan",
                    .parallel(
                        branches: [WorkflowSequence(name: "left", steps: [Self.step("l1")]), WorkflowSequence(name: "right", steps: [Self.step("r1")])],
                        maxConcurrency: 1))
            ])
        let planner = RunPlanner(definition: definition)
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["fan"])
        history.add(.stepStarted(path: "fan", attempt: 1, data: nil))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["fan.left/l1"], "one branch at a time")
        Self.started(&history, "fan.left/l1", output: 1)
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["fan.right/r1"])
        Self.started(&history, "fan.right/r1", output: 2)
        guard case .completeStep(let path, let output)? = planner.plan(history.state, nowMs: history.now).actions.first else {
            Issue.record("expected the join")
            return
        }
        #expect(path == "fan" && output == ["left": 1, "right": 2])
    }

    @Test func aMapRunsItsBodyPerItemAndAFailedChildFailsTheMap() {
        let definition = WorkflowDefinition(
            name: "w", agentID: "a",
            steps: [Self.step("each", .map(items: .literal(.array([])), body: WorkflowSequence(name: "each", steps: [Self.step("check")]), maxConcurrency: 2))])
        let planner = RunPlanner(definition: definition)
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "each", attempt: 1, data: ["a", "b", "c"]))
        let plan = planner.plan(history.state, nowMs: history.now)
        #expect(Self.starts(plan) == ["each[0]/check", "each[1]/check"], "two at a time")
        if case .start(let task)? = plan.actions.last { #expect(task.bindings["item"] == "b" && task.bindings["index"] == 1) }
        Self.started(&history, "each[0]/check", output: "A")
        history.add(.stepStarted(path: "each[1]/check", attempt: 1, data: nil))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["each[1]/check", "each[2]/check"])
        history.add(.stepCompleted(path: "each[1]/check", output: "B"))
        Self.started(&history, "each[2]/check", output: "C")
        guard case .completeStep(_, let output)? = planner.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected the join"); return }
        #expect(output == ["A", "B", "C"])

        var failing = History()
        failing.add(.runStarted(input: .null, budgets: .init()))
        failing.add(.stepStarted(path: "each", attempt: 1, data: ["a", "b"]))
        failing.add(.stepStarted(path: "each[0]/check", attempt: 1, data: nil))
        failing.add(.stepFailed(path: "each[0]/check", attempt: 1, error: StepError(code: "boom", message: ""), retryAtMs: nil))
        let failed = planner.plan(failing.state, nowMs: failing.now)
        #expect(failed.actions.count == 1, "nothing else of the map begins")
        guard case .failStep(let path, _, let error)? = failed.actions.first else { Issue.record("expected the map to fail"); return }
        #expect(path == "each" && error.code == "boom")
    }

    @Test func budgetsOnStepsAndWallTimeStopTheRun() {
        let planner = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("a"), Self.step("b")]))
        var history = History()
        history.add(.runStarted(input: .null, budgets: RunBudgetLimits(maxSteps: 1, maxWallTimeMs: 10_000)))
        let first = planner.plan(history.state, nowMs: history.now)
        #expect(Self.starts(first) == ["a"] && first.wakeAtMs == 11_000, "the wall-time deadline is a timer")
        Self.started(&history, "a", output: 1)
        guard case .stopByBudget(let limit, _)? = planner.plan(history.state, nowMs: history.now).actions.first else { Issue.record("expected a stop"); return }
        #expect(limit == "max_steps")
        history.add(.stoppedByBudget(limit: "max_steps", message: "m"))
        #expect(history.state.status == .stoppedByBudget && history.state.error?.code == "run_budget_exceeded")
        // An operator raises the budget and retries: the run goes on where it stopped.
        history.add(.retried(by: "ops", budgets: RunBudgetLimits(maxSteps: 5), paths: nil))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["b"])

        var slow = History()
        slow.add(.runStarted(input: .null, budgets: RunBudgetLimits(maxWallTimeMs: 10_000)))
        guard case .stopByBudget(let wall, _)? = planner.plan(slow.state, nowMs: 11_000).actions.first else { Issue.record("expected a stop"); return }
        #expect(wall == "max_wall_time_ms")
    }

    @Test func aPausedRunBeginsNothingAndAWaitingStepIsCheckedUntilItsDeadline() {
        let planner = RunPlanner(definition: WorkflowDefinition(name: "w", agentID: "a", steps: [Self.step("ask", .approval(message: .literal("ok?"))), Self.step("b")]))
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "ask", attempt: 1, data: nil))
        history.add(.stepWaiting(path: "ask", wait: .human(approvalID: "apr_1", deadlineMs: 90_000)))
        let plan = planner.plan(history.state, nowMs: history.now)
        guard case .checkWait(let task, .human(let id, _))? = plan.actions.first else { Issue.record("expected a wait"); return }
        #expect(task.path == "ask" && id == "apr_1" && plan.wakeAtMs == 90_000 && plan.isIdle)
        history.add(.paused(by: "ops"))
        history.add(.stepCompleted(path: "ask", output: ["approved": true]))
        #expect(history.state.status == .paused)
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)).isEmpty, "paused: b does not begin")
        history.add(.resumed(by: "ops"))
        #expect(Self.starts(planner.plan(history.state, nowMs: history.now)) == ["b"])
    }

    @Test func eventsRoundTripThroughTheirStoredForm() throws {
        let kinds: [RunEvent.Kind] = [
            .runStarted(input: ["a": 1], budgets: RunBudgetLimits(maxSteps: 3, maxCost: USD(dollars: 0.5))),
            .stepStarted(path: "m", attempt: 2, data: [1, 2]), .stepCompleted(path: "m", output: "x"),
            .stepFailed(path: "m", attempt: 2, error: StepError(code: "timeout", message: "t", retryable: true), retryAtMs: 99),
            .stepWaiting(path: "w", wait: .event(type: "po.approved", afterSeq: 4, deadlineMs: 7)), .stepWaiting(path: "s", wait: .sleep(untilMs: 5)), .stepWaiting(path: "p", wait: .policy(approvalID: "apr_2", deadlineMs: nil)),
            .agentTurn(path: "a", attempt: 1, turn: ["role": "assistant"]), .paused(by: "p"), .resumed(by: "p"),
            .retried(by: "o", budgets: RunBudgetLimits(maxTokens: 9), paths: ["a"]), .cancelled(by: "o", reason: "why"), .runCompleted(output: 1),
            .runFailed(error: StepError(code: "c", message: "m", retryable: false)), .stoppedByBudget(limit: "max_usd", message: "m"),
        ]
        for (index, kind) in kinds.enumerated() {
            let event = RunEvent(seq: Int64(index + 1), timeMs: 42, kind: kind)
            let decoded = try RunEvent(seq: event.seq, timeMs: 42, name: event.name, data: try JSONParser.parse(JSONWriter.bytes(event.data)))
            #expect(decoded == event, "\(event.name)")
        }
        #expect(throws: RunEvent.DecodeError.self) { try RunEvent(seq: 1, timeMs: 0, name: "nope", data: .null) }
    }

    @Test func aRetrySendsOnOnlyTheFailuresThatEndedTheRun() {
        let definition = WorkflowDefinition(
            name: "w", agentID: "a", steps: [Self.step("charge", onError: "notify"), Self.step("notify"), Self.step("final")])
        var history = History()
        history.add(.runStarted(input: .null, budgets: .init()))
        history.add(.stepStarted(path: "charge", attempt: 1, data: nil))
        history.add(.stepFailed(path: "charge", attempt: 1, error: StepError(code: "declined", message: ""), retryAtMs: nil))
        Self.started(&history, "notify", output: 1)
        history.add(.stepStarted(path: "final", attempt: 1, data: nil))
        history.add(.stepFailed(path: "final", attempt: 1, error: StepError(code: "boom", message: ""), retryAtMs: nil))
        history.add(.runFailed(error: StepError(code: "boom", message: "")))
        let paths = history.state.failuresToRetry(definition)
        #expect(paths == ["final"], "the handled failure is not run again (it would repeat its side effects)")
        history.add(.retried(by: "ops", budgets: nil, paths: paths))
        #expect(history.state.steps["charge"]?.phase == .failed && history.state.status == .running)
        #expect(Self.starts(RunPlanner(definition: definition).plan(history.state, nowMs: history.now)) == ["final"])
    }

    @Test func runBudgetsReserveTheWorstCaseAndSettleWhatWasUsed() {
        var budget = RunBudget(limits: RunBudgetLimits(maxModelCalls: 2, maxToolCalls: 1, maxTokens: 1_000, maxCost: USD(dollars: 0.10)))
        guard case .granted(let first) = budget.reserve(model: true, tokens: 600, cost: USD(dollars: 0.04)) else { Issue.record("granted"); return }
        // A second call reserving its worst case would pass max_tokens while the first is in flight.
        if case .exceeded(let limit, _) = budget.reserve(model: true, tokens: 600, cost: USD(dollars: 0.04)) { #expect(limit == "max_tokens") } else { Issue.record("tokens") }
        budget.settle(first, actual: RunUsage(modelCalls: 1, tokens: 200, cost: USD(dollars: 0.01)))
        #expect(budget.used == RunUsage(modelCalls: 1, tokens: 200, cost: USD(dollars: 0.01)) && budget.reserved == .zero)
        guard case .granted = budget.reserve(model: true, tokens: 600, cost: USD(dollars: 0.04)) else { Issue.record("fits after settling"); return }
        if case .exceeded(let limit, _) = budget.reserve(model: true, tokens: 10, cost: .zero) { #expect(limit == "max_model_calls") } else { Issue.record("calls") }
        guard case .granted(let tool) = budget.reserve(model: false, tokens: 0, cost: .zero) else { Issue.record("a tool call"); return }
        if case .exceeded(let limit, _) = budget.reserve(model: false, tokens: 0, cost: .zero) { #expect(limit == "max_tool_calls") } else { Issue.record("tools") }
        budget.settle(tool, actual: RunUsage(toolCalls: 1))
        var dollars = RunBudget(limits: RunBudgetLimits(maxCost: USD(dollars: 0.05)), used: RunUsage(cost: USD(dollars: 0.03)))
        if case .exceeded(let limit, let message) = dollars.reserve(model: true, tokens: 10, cost: USD(dollars: 0.03)) {
            #expect(limit == "max_usd" && message.contains("max_usd"))
        } else {
            Issue.record("restored usage counts")
        }
    }

    @Test func templatesRenderTypedValuesAndText() throws {
        let environment = CELEnvironment(variables: ["order": .dyn], costLimit: 10_000)
        let whole = try WorkflowTemplate.compile(string: "{{ order.lines.map(l, l.qty) }}", environment: environment)
        let text = try WorkflowTemplate.compile(string: "PO {{ order.po }} for {{ order.total }} \\{{ literal", environment: environment)
        let bindings = ["order": CELValue(json: ["po": "A-1", "total": 12.5, "lines": [["qty": 2], ["qty": 3]]])]
        #expect(try whole.render(bindings) == [2, 3])
        #expect(try text.render(bindings) == "PO A-1 for 12.5 {{ literal")
        #expect(throws: WorkflowTemplate.CompileError.self) { try WorkflowTemplate.compile(string: "{{ other.x }}", environment: environment) }
        #expect(throws: WorkflowTemplate.CompileError.self) { try WorkflowTemplate.compile(string: "{{ order.po ", environment: environment) }
        let missing = try WorkflowTemplate.compile(string: "{{ order.nope }}", environment: environment)
        #expect(throws: StepError.self) { try missing.render(bindings) }
    }
}

/// A seeded generator, so jitter is checked against its bounds reproducibly.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
