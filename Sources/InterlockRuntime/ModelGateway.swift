public import InterlockCore
import InterlockPolicy
public import InterlockProviders
public import Logging
import Metrics
public import NIOCore
import Tracing
import Instrumentation

/// Where and how a model call was served, sent back as response headers.
public struct ModelResponseInfo: Sendable {
    public var requestID: String
    public var deploymentID: String
    public var provider: String
    public var attempts: Int
    /// Time spent inside Interlock, excluding upstream time and queue waits.
    public var overheadMs: Double
    public var queuedMs: Double
    /// Known for complete responses; a stream's cost is known only at its end (usage ledger).
    public var cost: USD?
}

/// The answer to a model call, in the agent's format.
public enum ModelResult: Sendable {
    case complete(info: ModelResponseInfo, body: ByteBuffer)
    case stream(info: ModelResponseInfo, stream: ModelStream)
}

/// The model target of the governed pipeline: route, execute (limits, breakers, retries,
/// fallbacks) and translate, with the shared stages (authenticate, authorize, admit,
/// account) done by the `CallGovernor`.
public final class ModelGateway: Sendable {
    public let governor: CallGovernor
    public let settings: GatewaySettings
    private let retry: RetryPolicy
    private let aliases: [String: ModelAliasSettings]
    /// Each alias followed by its fallbacks (breadth first, each once), each with the states of
    /// its enabled deployments, fixed at start.
    private let aliasChains: [String: [(strategy: RoutingStrategy, deployments: [DeploymentState])]]
    private let deployments: [String: DeploymentState]
    private let httpUpstream: any ModelUpstream
    private let mockUpstream: any ModelUpstream
    private let logger: Logger
    /// `logging.log_prompts`: log each request body (off by default; prompts often hold personal data).
    private let logPrompts: Bool
    /// Spans and trace headers; no-ops when no tracer is installed.
    let tracing = CallTracing()
    /// Largest non-streamed upstream answer accepted (`gateway.max_response_bytes`).
    private var maxResponseBytes: Int { settings.maxResponseBytes }

    public init(configuration: InterlockConfiguration, governor: CallGovernor, httpUpstream: any ModelUpstream, mockUpstream: any ModelUpstream, logger: Logger) {
        self.governor = governor
        self.settings = configuration.gateway
        self.retry = RetryPolicy(configuration.gateway)
        self.aliases = Dictionary(configuration.models.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let providers = Dictionary(configuration.providers.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let breaker = configuration.gateway.breaker
        let policy = CircuitBreakerPolicy(
            consecutiveFailures: breaker.consecutiveFailures, errorRateThreshold: Double(breaker.errorRatePercent) / 100,
            minimumCalls: breaker.minimumCalls, windowSize: breaker.windowSize, openDuration: .milliseconds(breaker.openMs),
            halfOpenProbes: breaker.halfOpenProbes)
        let queue = AdmissionQueuePolicy(maxDepth: configuration.gateway.queueMaxDepth, maxWait: .milliseconds(configuration.gateway.queueMaxWaitMs))
        var states: [String: DeploymentState] = [:]
        for alias in configuration.models {
            for deployment in alias.deployments {
                guard let provider = providers[deployment.providerID] else { continue }
                guard provider.isEnabled else {
                    logger.notice("deployment disabled: its provider has no API key", metadata: ["interlock.deployment": "\(deployment.id)", "interlock.provider": "\(provider.id)"])
                    continue
                }
                states[deployment.id] = DeploymentState(settings: deployment, provider: provider, breaker: policy, queue: queue)
            }
        }
        self.deployments = states
        var chains: [String: [(strategy: RoutingStrategy, deployments: [DeploymentState])]] = [:]
        for alias in configuration.models {
            var chain: [(strategy: RoutingStrategy, deployments: [DeploymentState])] = []
            var visited = Set<String>()
            var queue = [alias.name]
            while !queue.isEmpty {
                let name = queue.removeFirst()
                guard visited.insert(name).inserted, let settings = self.aliases[name] else { continue }
                chain.append((settings.strategy, settings.deployments.compactMap { states[$0.id] }))
                queue += settings.fallbacks
            }
            chains[alias.name] = chain
        }
        self.aliasChains = chains
        self.httpUpstream = httpUpstream
        self.mockUpstream = mockUpstream
        self.logger = logger
        self.logPrompts = configuration.logging.logPrompts
    }

    /// The aliases a caller may call (its agent's grants and its token's scopes), sorted.
    public func models(for caller: Caller) -> [String] {
        aliases.keys.filter { caller.permits(kind: TargetKind.model.rawValue, name: $0) }.sorted()
    }

    public func deploymentState(_ id: String) -> DeploymentState? { deployments[id] }

    public var allDeployments: [DeploymentState] { deployments.values.sorted { $0.settings.id < $1.settings.id } }

    public func queueDepths() -> [(String, Int)] {
        allDeployments.map { ($0.settings.id, $0.limiter.queueDepth) }
    }

    // MARK: - The call

    public func handle(_ request: ModelRequest, caller: Caller, requestID: String, traceParent: String?, traceState: String?) async throws -> ModelResult {
        let (call, chain) = try prepare(request, caller: caller, requestID: requestID, traceParent: traceParent, traceState: traceState)
        var approvals = try await governor.enforcePolicy(call, target: policyTarget(request), arguments: { Self.arguments(request) })
        let request = try await guardIn(request, call: call, approvals: &approvals)
        let admission = try await governor.admit(call)
        try await governor.useApprovals(approvals, call: call, admission: admission)
        let span = begin(request, admission: admission)
        do {
            return try await run(request, chain: chain, admission: admission, span: span, resume: nil)
        } catch let error as GatewayError where Self.refusedBeforeUpstream.contains(error.code) {
            // Refused before any model saw it: the approvals stay for the call sent again.
            await governor.restoreApprovals(approvals, call: call)
            throw error
        }
    }

    /// The checks before admission: the alias exists and is granted (default deny), the
    /// deployments to try, and what the call may cost.
    private func prepare(
        _ request: ModelRequest, caller: Caller, requestID: String, traceParent: String?, traceState: String?, audited: Bool = true
    ) throws(GatewayError) -> (GovernedCall, [DeploymentState]) {
        guard aliases[request.alias] != nil else {
            let error = GatewayError.unknownModel(request.alias)
            if audited { governor.auditRefusal(error, action: "model.call", caller: caller, target: request.alias, requestID: requestID) }
            throw error
        }
        try governor.authorize(caller, kind: .model, target: request.alias, audited: audited, requestID: requestID)
        let chain = candidateChain(for: request.alias)
        let expected = request.expectedUsage(defaultMaxOutputTokens: settings.defaultMaxOutputTokens)
        // Reserve for the most expensive deployment the call could land on.
        var reserve = USD.zero
        for deployment in chain { reserve = max(reserve, deployment.settings.price.cost(of: expected)) }
        let call = GovernedCall(
            requestID: requestID, caller: caller, targetKind: .model, target: request.alias, operation: request.operation.rawValue,
            stream: request.stream, expectedTokens: expected.totalTokens, expectedCost: reserve, traceParent: traceParent, traceState: traceState,
            argumentsHash: governor.needsArgumentsHash ? AuditRecord.sha256Hex(request.body) : nil)
        return (call, chain)
    }

    /// Refusals of a call that never reached a model.
    static let refusedBeforeUpstream: Set<String> = [
        "no_deployment_available", "deployment_unavailable", "deployment_rate_limited", "request_cancelled", "agent_disabled",
    ]

    /// The parts of a request and of an answer that guardrails read: what people and models
    /// wrote, not ids, model names or parameters.
    static let requestTextKeys: Set<String> = ["messages", "system", "input", "prompt"]
    static let answerTextKeys: Set<String> = ["choices", "content"]

    /// Guard (in): the request as the upstream will get it (redacted where a rule says so),
    /// or the refusal, or a wait for a human.
    private func guardIn(_ request: ModelRequest, call: GovernedCall, approvals: inout [String]) async throws(GatewayError) -> ModelRequest {
        guard let guardrails = governor.guardrails, let plan = guardrails.plan(call.caller, kind: .model, name: request.alias, direction: .in) else {
            return request
        }
        let body = try request.decodedBody()
        guard
            let redacted = try await guardrails.checkIn(
                .object(body), keys: Self.requestTextKeys, plan: plan, caller: call.caller, kind: .model, name: request.alias, requestID: call.requestID,
                argumentsHash: call.argumentsHash ?? AuditRecord.sha256Hex(request.body), approvals: &approvals)
        else { return request }
        return try ModelRequest.parse(body: JSONWriter.bytes(redacted), format: request.format, operation: request.operation)
    }

    /// What policy conditions see as `target` for a model call.
    private func policyTarget(_ request: ModelRequest) -> PolicyInput.Target {
        PolicyInput.Target(kind: TargetKind.model.rawValue, name: request.alias, operation: request.operation.rawValue)
    }

    /// A model request's body as policy conditions see it (`args`).
    private static func arguments(_ request: ModelRequest) -> JSONValue {
        (try? JSONParser.parse(request.body)) ?? .object([:])
    }

    /// After admission: the prompt log (when enabled) and the call's span.
    private func begin(_ request: ModelRequest, admission: CallGovernor.Admission) -> any Span {
        let call = admission.call
        if logPrompts {
            logger.info("model request body", metadata: [
                "interlock.request.id": "\(call.requestID)", "interlock.agent.id": "\(call.agent.id)",
                "interlock.prompt": "\(String(decoding: request.body, as: UTF8.self))",
            ])
        }
        let span = tracing.startSpan("\(request.operation == .chat ? "chat" : "embeddings") \(request.alias)")
        // Setting an attribute builds a dictionary even on a span that records nothing.
        guard span.isRecording else { return span }
        span.attributes["gen_ai.operation.name"] = request.operation == .chat ? "chat" : "embeddings"
        span.attributes["gen_ai.request.model"] = request.alias
        span.attributes["interlock.agent.id"] = call.agent.id
        span.attributes["interlock.request.id"] = call.requestID
        if let maxTokens = request.maxOutputTokens { span.attributes["gen_ai.request.max_tokens"] = maxTokens }
        return span
    }

    /// Execute and, on failure, settle the admission and end the span.
    private func run(
        _ request: ModelRequest, chain: [DeploymentState], admission: CallGovernor.Admission, span: any Span, resume: Resume?
    ) async throws -> ModelResult {
        do {
            let result = try await execute(request, chain: chain, admission: admission, span: span, resume: resume)
            if case .complete = result { span.end() }
            return result
        } catch let settled as SettledFailure {
            span.attributes["error.type"] = settled.error.code
            span.setStatus(SpanStatus(code: .error, message: settled.error.code))
            span.end()
            throw settled.error
        } catch {
            let gatewayError = (error as? GatewayError) ?? GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the request.")
            span.attributes["error.type"] = gatewayError.code
            span.setStatus(SpanStatus(code: .error, message: gatewayError.code))
            span.end()
            governor.settle(admission, CallOutcome(outcome: .error, status: gatewayError.status, errorCode: gatewayError.code))
            throw gatewayError
        }
    }

    // MARK: - The event-loop path

    /// Starts a call on the event loop that read it: the same stages as `handle`,
    /// taken only when none of them has to wait. Anything else is declined before any state
    /// changes (and served by `handle`), or continued on the async path after admission.
    public func startOnLoop(
        _ request: ModelRequest, caller: Caller, requestID: String, traceParent: String?, traceState: String?, maxResponseBytes: Int
    ) -> LoopStart {
        guard let (call, chain) = try? prepare(request, caller: caller, requestID: requestID, traceParent: traceParent, traceState: traceState, audited: false),
            let first = chain.first, first.provider.kind != .mock, !governor.guardrailsApply(caller, kind: .model, name: request.alias),
            governor.policyAllowsOnLoop(call, target: policyTarget(request), arguments: { Self.arguments(request) })
        else { return .declined }
        let endpoint = request.operation == .chat ? first.chatEndpoint : first.embeddingsEndpoint
        guard let target = endpoint.target else { return .declined }
        let admission: CallGovernor.Admission
        do {
            guard let admitted = try governor.admitImmediately(call) else { return .declined }
            admission = admitted
        } catch {
            return .refused(error)
        }
        let span = begin(request, admission: admission)
        // Built only when needed: it copies the request.
        func later() -> LoopStart { .continueAsync(LoopContinuation(request: request, chain: chain, admission: admission, span: span, resume: nil)) }
        guard let body = try? RequestPreparation.body(for: request, provider: first.provider, deployment: first.settings, defaultMaxTokens: settings.defaultMaxOutputTokens)
        else { return later() }
        switch first.acquireBreaker() {
        case .allowed: break
        case .probe:
            first.releaseProbe()
            return later()
        case .rejected:
            return later()
        }
        let expected = request.expectedUsage(defaultMaxOutputTokens: settings.defaultMaxOutputTokens)
        // A deployment limited across the cluster is counted in the store: the waiting path.
        if governor.shared != nil, !first.settings.limits.isUnlimited {
            first.releaseProbe()
            return later()
        }
        guard first.limiter.acquireImmediately(tokens: expected.totalTokens) else { return later() }
        let headers = upstreamHeaders(admission, span: span, after: endpoint.headers, stream: request.stream)
        return .send(LoopAttempt(
            target: target, headers: headers, body: ByteBuffer(bytes: body),
            timeout: .milliseconds(first.settings.timeoutMs ?? settings.upstreamTimeoutMs), maxResponseBytes: min(maxResponseBytes, self.maxResponseBytes),
            stream: request.stream, request: request, chain: chain, deployment: first, admission: admission, span: span, sent: .now))
    }

    /// A streamed loop attempt whose upstream answered 2xx: the session that relays and
    /// settles it. A stream that ends or fails before its first event is handed to the async
    /// path with `streamFailedOnLoop`, as the async path retries such a stream.
    public func openStreamOnLoop(_ attempt: LoopAttempt) -> LoopStreamSession {
        let deployment = attempt.deployment
        let admission = attempt.admission
        deployment.record(success: true)
        annotate(attempt.span, deployment: deployment)
        let upstreamTime = attempt.sent.duration(to: .now)
        deployment.observe(latency: upstreamTime)
        let request = attempt.request
        let transcoder = StreamTranscoder(
            from: deployment.provider.kind.nativeFormat, to: request.format, alias: request.alias, clientWantsUsage: request.clientWantsStreamUsage,
            created: governor.nowMs() / 1000, requestID: admission.call.requestID)
        let info = ModelResponseInfo(
            requestID: admission.call.requestID, deploymentID: deployment.settings.id, provider: deployment.provider.id, attempts: 1,
            overheadMs: max(0, (admission.startedAt.duration(to: .now) - upstreamTime).milliseconds), queuedMs: 0, cost: nil)
        return LoopStreamSession(
            info: info, transcoder: transcoder, maxEventBytes: settings.maxStreamEventBytes, estimatedInputTokens: request.estimatedInputTokens,
            admission: admission,
            settle: streamSettlement(deployment: deployment, admission: admission, span: attempt.span, attempts: 1))
    }

    /// A loop stream that broke off before its first event: retry it on the async path.
    public func streamFailedOnLoop(_ attempt: LoopAttempt, _ session: LoopStreamSession) -> LoopContinuation {
        session.abandon()
        let message = session.overflowed
            ? Self.eventTooLarge(attempt.request.alias, settings) : "The upstream stream for '\(attempt.request.alias)' ended without any event."
        return LoopContinuation(
            request: attempt.request, chain: attempt.chain, admission: attempt.admission, span: attempt.span,
            resume: Resume(failure: .retryable(status: 502, message: message, retryAfter: nil), sent: attempt.sent))
    }

    static func eventTooLarge(_ alias: String, _ settings: GatewaySettings) -> String {
        "The upstream stream for '\(alias)' sent an event of more than \(settings.maxStreamEventBytes) bytes (gateway.max_stream_event_bytes)."
    }

    /// The tokens a call really used replace its estimate in the deployment's limits (and in
    /// the cluster's count of them).
    static func reconcileLimits(_ deployment: DeploymentState, governor: CallGovernor, estimatedTokens: Int, actualTokens: Int) {
        deployment.limiter.reconcile(estimatedTokens: estimatedTokens, actualTokens: actualTokens)
        if let shared = governor.shared, !deployment.settings.limits.isUnlimited {
            shared.reconcile("deployment:\(deployment.settings.id)", limits: deployment.settings.limits, estimatedTokens: estimatedTokens, actualTokens: actualTokens)
        }
    }

    /// Settles a stream once it ended: cost, limiter, span, usage ledger.
    fileprivate func streamSettlement(
        deployment: DeploymentState, admission: CallGovernor.Admission, span: any Span, attempts: Int
    ) -> StreamSettlement {
        let governor = self.governor
        return { usage, outcome, status, errorCode in
            let cost = deployment.settings.price.cost(of: usage)
            Self.reconcileLimits(deployment, governor: governor, estimatedTokens: admission.call.expectedTokens, actualTokens: usage.totalTokens)
            if span.isRecording {
                span.attributes["gen_ai.usage.input_tokens"] = usage.inputTokens
                span.attributes["gen_ai.usage.output_tokens"] = usage.outputTokens
                if outcome != .success { span.attributes["error.type"] = "stream_incomplete" }
            }
            span.end()
            governor.settle(admission, CallOutcome(
                usage: usage, cost: cost, deploymentID: deployment.settings.id, provider: deployment.provider.id, upstreamModel: deployment.settings.model,
                attempts: attempts, outcome: outcome, status: status, errorCode: errorCode))
        }
    }

    /// Takes the upstream's answer to a loop attempt. Success is settled here; a failure goes
    /// to the async path, which handles it exactly as it handles its own attempts (retry,
    /// fallback, or the error the agent gets).
    public func finishOnLoop(_ attempt: LoopAttempt, _ result: Result<LoopHTTPResponse, UpstreamFailure>) -> LoopFinish {
        let deployment = attempt.deployment
        let request = attempt.request
        func resume(_ failure: AttemptFailure) -> LoopFinish {
            .continueAsync(LoopContinuation(
                request: request, chain: attempt.chain, admission: attempt.admission, span: attempt.span, resume: Resume(failure: failure, sent: attempt.sent)))
        }
        let response: LoopHTTPResponse
        switch result {
        case .failure(let failure):
            return resume(.retryable(status: failure == .timeout ? 504 : 502, message: "The upstream for '\(request.alias)' failed: \(failure).", retryAfter: nil))
        case .success(let answer):
            response = answer
        }
        guard (200..<300).contains(response.status) else {
            return resume(classify(status: response.status, body: Array(response.body.readableBytesView), retryAfter: response.retryAfter, request: request, deployment: deployment))
        }
        deployment.record(success: true)
        annotate(attempt.span, deployment: deployment)
        let upstreamTime = attempt.sent.duration(to: .now)
        do {
            let result = try complete(
                response.body, request: request, deployment: deployment, admission: attempt.admission, span: attempt.span,
                timing: (1, attempt.admission.startedAt.duration(to: .now) - upstreamTime, .zero))
            deployment.observe(latency: upstreamTime)
            attempt.span.end()
            return .done(result)
        } catch {
            return resume(error)
        }
    }

    /// Finishes a loop call on the async path.
    public func continueAsync(_ continuation: LoopContinuation) async throws -> ModelResult {
        try await run(continuation.request, chain: continuation.chain, admission: continuation.admission, span: continuation.span, resume: continuation.resume)
    }

    /// The deployments to try, in order: the alias's, then each fallback alias's.
    private func candidateChain(for alias: String) -> [DeploymentState] {
        var chain: [DeploymentState] = []
        var generator = SystemRandomNumberGenerator()
        for (strategy, states) in aliasChains[alias] ?? [] {
            if states.count == 1 {
                // Nothing to choose between: skip the ranking.
                if states[0].wouldAllow() { chain.append(states[0]) }
                continue
            }
            let candidates = states.map { state in
                ModelRouter.Candidate(
                    id: state.settings.id, tier: state.settings.tier, weight: state.settings.weight, price: state.settings.price,
                    latencyMs: state.latencyMs, available: state.wouldAllow(), hasCapacity: !state.limiter.isThrottled())
            }
            let ranked = ModelRouter.rank(candidates, strategy: strategy, expected: .zero, using: &generator)
            chain += ranked.compactMap { deployments[$0] }
        }
        return chain
    }

    fileprivate enum AttemptFailure: Error {
        /// Try again (same deployment after backoff, or the next one).
        case retryable(status: Int, message: String, retryAfter: Duration?)
        /// The request itself is wrong: answer the agent, no retry, no fallback.
        case final(GatewayError)
        /// The upstream answered and the call is settled (its cost recorded), but the agent
        /// gets this error (a guardrail withheld the answer).
        case settled(GatewayError)
    }

    /// A failure whose call was already settled: `run` passes it on without settling again.
    struct SettledFailure: Error {
        let error: GatewayError
    }

    private func execute(
        _ request: ModelRequest, chain: [DeploymentState], admission: CallGovernor.Admission, span: any Span, resume: Resume?
    ) async throws -> ModelResult {
        guard !chain.isEmpty else {
            throw GatewayError(kind: .unavailable, code: "no_deployment_available", message: "No deployment of '\(request.alias)' is available right now (circuit breakers open or providers not configured).", retryAfterSeconds: 5)
        }
        let clock = ContinuousClock()
        var attempts = 0
        var upstreamTime = Duration.zero
        var waited = admission.queued
        var lastError: GatewayError?
        let expected = request.expectedUsage(defaultMaxOutputTokens: settings.defaultMaxOutputTokens)
        let headers = upstreamHeaders(admission, span: span)

        for (index, deployment) in chain.enumerated() {
            // A call resumed from the event-loop path already holds this deployment's breaker
            // permit and limiter tokens, and its first attempt already failed.
            var injectedFailure = index == 0 ? resume?.failure : nil
            // Translate first: a request this provider cannot take must not hold a permit or tokens.
            let body = try RequestPreparation.body(for: request, provider: deployment.provider, deployment: deployment.settings, defaultMaxTokens: settings.defaultMaxOutputTokens)
            if injectedFailure == nil {
                switch deployment.acquireBreaker() {
                case .rejected(let retryAfter):
                    lastError = GatewayError(kind: .unavailable, code: "deployment_unavailable", message: "Every deployment of '\(request.alias)' is temporarily unavailable.", retryAfterSeconds: CallGovernor.seconds(retryAfter))
                    continue
                case .allowed, .probe:
                    break
                }
                let admitted: AsyncRateLimiter.Outcome
                do {
                    admitted = try await deployment.limiter.acquire(tokens: expected.totalTokens, priority: admission.call.agent.priority)
                } catch {
                    deployment.releaseProbe()
                    throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled while queued.", status: 499)
                }
                switch admitted {
                case .rejected(let retryAfter, _):
                    deployment.releaseProbe()
                    lastError = GatewayError(
                        kind: .rateLimit, code: "deployment_rate_limited",
                        message: "'\(request.alias)' is at its rate limit and the wait queue is full; retry after \(CallGovernor.seconds(retryAfter)) s.",
                        retryAfterSeconds: CallGovernor.seconds(retryAfter))
                    continue
                case .admitted(let queuedFor):
                    waited += queuedFor
                }
                if let shared = governor.shared, !deployment.settings.limits.isUnlimited {
                    let refusal: Duration?
                    do {
                        refusal = try await shared.acquire("deployment:\(deployment.settings.id)", limits: deployment.settings.limits, tokens: expected.totalTokens)
                    } catch {
                        deployment.releaseProbe()
                        deployment.limiter.reconcile(estimatedTokens: expected.totalTokens, actualTokens: 0)
                        throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled while queued.", status: 499)
                    }
                    if let retryAfter = refusal {
                        deployment.releaseProbe()
                        deployment.limiter.reconcile(estimatedTokens: expected.totalTokens, actualTokens: 0)
                        lastError = GatewayError(
                            kind: .rateLimit, code: "deployment_rate_limited",
                            message: "'\(request.alias)' is at its rate limit across the cluster; retry after \(CallGovernor.seconds(retryAfter)) s.",
                            retryAfterSeconds: CallGovernor.seconds(retryAfter))
                        continue
                    }
                }
            }
            // Once a result is returned, its settlement reconciles the tokens; every other exit gives them back.
            var handedOff = false
            defer { if !handedOff { Self.reconcileLimits(deployment, governor: governor, estimatedTokens: expected.totalTokens, actualTokens: 0) } }
            let timeout = Duration.milliseconds(deployment.settings.timeoutMs ?? settings.upstreamTimeoutMs)
            let upstreamCall = UpstreamCall(
                endpoint: request.operation == .chat ? deployment.chatEndpoint : deployment.embeddingsEndpoint, provider: deployment.provider, deployment: deployment.settings, operation: request.operation, format: deployment.provider.kind.nativeFormat,
                body: body, stream: request.stream, headers: headers, timeout: timeout)
            var attempt = 0
            while attempt < settings.retryMaxAttempts {
                attempt += 1
                attempts += 1
                let sent = injectedFailure != nil ? (resume?.sent ?? clock.now) : clock.now
                do {
                    if let failure = injectedFailure {
                        injectedFailure = nil
                        throw failure
                    }
                    let result = try await tryDeployment(upstreamCall, request: request, deployment: deployment, admission: admission, span: span) { elapsed in
                        upstreamTime += elapsed
                        return (attempts, admission.startedAt.duration(to: clock.now) - upstreamTime - waited, waited)
                    }
                    deployment.observe(latency: sent.duration(to: clock.now))
                    handedOff = true
                    return result
                } catch let failure as AttemptFailure {
                    switch failure {
                    case .final(let error):
                        deployment.record(success: true)  // The deployment answered; the request was at fault.
                        throw error
                    case .settled(let error):
                        // The answer came and was settled (limiter reconciled, success recorded).
                        handedOff = true
                        throw SettledFailure(error: error)
                    case .retryable(let status, let message, let retryAfter):
                        upstreamTime += sent.duration(to: clock.now)
                        if status == 429 {
                            if let retryAfter { deployment.limiter.throttle(for: retryAfter) }
                            deployment.releaseProbe()
                        } else {
                            deployment.record(success: false)
                        }
                        Counter(label: "interlock_upstream_failures_total", dimensions: [("deployment", deployment.settings.id), ("status", String(status))]).increment()
                        lastError = GatewayError(
                            kind: status == 429 ? .rateLimit : .upstream, code: status == 429 ? "upstream_rate_limited" : (status == 504 ? "upstream_timeout" : "upstream_error"),
                            message: message, status: status == 429 ? 429 : (status == 504 ? 504 : 502),
                            retryAfterSeconds: retryAfter.map(CallGovernor.seconds))
                        logger.warning("upstream attempt failed", metadata: [
                            "interlock.request.id": "\(admission.call.requestID)", "interlock.deployment": "\(deployment.settings.id)",
                            "interlock.status": "\(status)", "interlock.attempt": "\(attempt)",
                        ])
                        let maxBackoff = Duration.milliseconds(settings.retryMaxBackoffMs)
                        if let retryAfter, retryAfter > maxBackoff { attempt = settings.retryMaxAttempts; continue }
                        guard attempt < settings.retryMaxAttempts else { continue }
                        if deployment.wouldAllow() == false { attempt = settings.retryMaxAttempts; continue }
                        let backoff = retryAfter ?? retry.backoff(afterAttempt: attempt)
                        let before = clock.now
                        try? await Task.sleep(for: backoff)
                        waited += before.duration(to: clock.now)
                        if Task.isCancelled { throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499) }
                        // A retry needs a fresh permit from the breaker and the limiter's accounting stays with the first admission.
                        if case .rejected = deployment.acquireBreaker() { attempt = settings.retryMaxAttempts }
                    }
                }
            }
        }
        throw lastError ?? GatewayError(kind: .upstream, code: "upstream_error", message: "No deployment could serve the request.")
    }

    /// Headers of this request for the upstream: `endpoint` (the provider's own), the request
    /// id, the trace context and, for a stream, `accept`, built in one array (every call asks).
    private func upstreamHeaders(
        _ admission: CallGovernor.Admission, span: any Span, after endpoint: [(String, String)] = [], stream: Bool = false
    ) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(endpoint.count + 4)
        headers.append(contentsOf: endpoint)
        headers.append(("x-request-id", admission.call.requestID))
        tracing.appendTraceHeaders(span, traceParent: admission.call.traceParent, traceState: admission.call.traceState, to: &headers)
        if stream { headers.append(("accept", "text/event-stream")) }
        return headers
    }

    /// One try against one deployment. `timing` is called once the upstream answered with
    /// the upstream time; it returns (attempts, overhead, queued) for the response headers.
    private func tryDeployment(
        _ call: UpstreamCall, request: ModelRequest, deployment: DeploymentState, admission: CallGovernor.Admission, span: any Span,
        timing: (Duration) -> (Int, Duration, Duration)
    ) async throws -> ModelResult {
        let clock = ContinuousClock()
        let sent = clock.now
        let upstream = deployment.provider.kind == .mock ? mockUpstream : httpUpstream
        let response: UpstreamResponse
        do {
            response = try await upstream.send(call)
        } catch let failure as UpstreamFailure {
            throw AttemptFailure.retryable(status: failure == .timeout ? 504 : 502, message: "The upstream for '\(request.alias)' failed: \(failure).", retryAfter: nil)
        } catch is CancellationError {
            throw GatewayError(kind: .rateLimit, code: "request_cancelled", message: "The request was cancelled.", status: 499)
        } catch {
            throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' could not be reached.", retryAfter: nil)
        }
        let native = call.format
        guard (200..<300).contains(response.status) else {
            let bytes = (try? await response.body.collect(upTo: 1 << 20)).map { Array($0.readableBytesView) } ?? []
            throw classify(status: response.status, body: bytes, retryAfter: response.retryAfter, request: request, deployment: deployment)
        }
        deployment.record(success: true)
        annotate(span, deployment: deployment)
        let created = governor.nowMs() / 1000

        if !request.stream {
            let buffer: ByteBuffer
            do {
                buffer = try await response.body.collect(upTo: maxResponseBytes)
            } catch {
                throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' broke off its answer.", retryAfter: nil)
            }
            return try complete(buffer, request: request, deployment: deployment, admission: admission, span: span, timing: timing(sent.duration(to: clock.now)))
        }

        // Streaming: read until the first event arrives before committing to this deployment,
        // so a stream that fails before its first byte can still be retried elsewhere.
        var iterator = response.body.makeIterator()
        var parser = ServerSentEventParser(maxEventBytes: settings.maxStreamEventBytes)
        var transcoder = StreamTranscoder(
            from: native, to: request.format, alias: request.alias, clientWantsUsage: request.clientWantsStreamUsage, created: created,
            requestID: admission.call.requestID)
        var first: [UInt8] = []
        var ended = false
        let caller = admission.call.caller
        var streamGuard = governor.guardrails.flatMap { guardrails in
            guardrails.plan(caller, kind: .model, name: request.alias, direction: .out).map {
                StreamGuard(plan: $0, window: guardrails.engine.settings.streamWindowBytes, native: native)
            }
        }
        while first.isEmpty, !ended, streamGuard?.blocked == nil {
            let chunk: ByteBuffer?
            do {
                chunk = try await iterator.next()
            } catch {
                throw AttemptFailure.retryable(status: 502, message: "The upstream stream for '\(request.alias)' failed before its first event.", retryAfter: nil)
            }
            guard let chunk else { ended = true; break }
            for event in parser.consume(chunk.readableBytesView) {
                for passed in ModelStream.guarded(event, &streamGuard) { first += transcoder.transcode(passed) }
            }
            if parser.overflowed, first.isEmpty {
                throw AttemptFailure.retryable(status: 502, message: Self.eventTooLarge(request.alias, settings), retryAfter: nil)
            }
        }
        if first.isEmpty, streamGuard?.blocked == nil {
            throw AttemptFailure.retryable(status: 502, message: "The upstream stream for '\(request.alias)' ended without any event.", retryAfter: nil)
        }
        let (attempts, overhead, queued) = timing(sent.duration(to: clock.now))
        let info = ModelResponseInfo(
            requestID: admission.call.requestID, deploymentID: deployment.settings.id, provider: deployment.provider.id, attempts: attempts,
            overheadMs: max(0, overhead.milliseconds), queuedMs: queued.milliseconds, cost: nil)
        let stream = ModelStream(
            iterator: iterator, parser: parser, transcoder: transcoder, pending: first, upstreamEnded: ended,
            estimatedInputTokens: request.estimatedInputTokens, admission: admission, streamGuard: streamGuard,
            recordHits: { [guardrails = governor.guardrails] hits in
                guardrails?.record(hits, direction: .out, caller: caller, target: request.alias, requestID: admission.call.requestID, argumentsHash: nil)
            },
            settle: streamSettlement(deployment: deployment, admission: admission, span: span, attempts: attempts))
        return .stream(info: info, stream: stream)
    }
}

extension ModelGateway {
    /// What an error status from the upstream means for the call.
    fileprivate func classify(status: Int, body: [UInt8], retryAfter: Duration?, request: ModelRequest, deployment: DeploymentState) -> AttemptFailure {
        let upstreamMessage = ResponseTranslation.errorMessage(fromBody: body).map { SecretRedaction.redact($0, secrets: [deployment.provider.apiKey]) }
        switch status {
        case 429, 408, 409, 500...599:
            return .retryable(
                status: status, message: "The upstream for '\(request.alias)' answered \(status)" + (upstreamMessage.map { ": \($0)" } ?? "."),
                retryAfter: retryAfter)
        case 401, 403, 404:
            // Interlock's own credentials or deployment name are wrong: another deployment may work.
            return .retryable(status: 502, message: "The upstream for '\(request.alias)' refused Interlock's credentials or deployment (HTTP \(status)).", retryAfter: nil)
        default:
            return .final(GatewayError(
                kind: .invalidRequest, code: "upstream_rejected_request",
                message: "The model provider rejected the request" + (upstreamMessage.map { ": \($0)" } ?? "."), status: status))
        }
    }

    fileprivate func annotate(_ span: any Span, deployment: DeploymentState) {
        guard span.isRecording else { return }
        span.attributes["gen_ai.provider.name"] = deployment.provider.kind.rawValue
        span.attributes["gen_ai.response.model"] = deployment.settings.model
        span.attributes["interlock.deployment"] = deployment.settings.id
    }

    /// A complete (non-streamed) answer: usage, cost, translation to the agent's format, and
    /// settlement. `timing` is (attempts, overhead, queued) for the response headers.
    fileprivate func complete(
        _ buffer: ByteBuffer, request: ModelRequest, deployment: DeploymentState, admission: CallGovernor.Admission, span: any Span,
        timing: (Int, Duration, Duration)
    ) throws(AttemptFailure) -> ModelResult {
        let (attempts, overhead, queued) = timing
        let native = deployment.provider.kind.nativeFormat
        var usage = buffer.withUnsafeReadableBytes { UsageReading.fromBody($0, format: native) } ?? TokenUsage(inputTokens: request.estimatedInputTokens)
        var out = buffer
        if native != request.format {
            guard case .object(let object)? = buffer.withUnsafeReadableBytes({ try? JSONParser.parse($0) }) else {
                throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' sent an answer that is not JSON.", retryAfter: nil)
            }
            let translated: JSONObject =
                request.format == .openAI
                ? ResponseTranslation.openAIResponse(fromAnthropic: object, model: request.alias, created: governor.nowMs() / 1000)
                : ResponseTranslation.anthropicResponse(fromOpenAI: object, model: request.alias)
            out = ByteBuffer(bytes: JSONWriter.bytes(.object(translated)))
        }
        if request.operation == .embeddings { usage.outputTokens = 0 }
        let cost = deployment.settings.price.cost(of: usage)
        Self.reconcileLimits(deployment, governor: governor, estimatedTokens: admission.call.expectedTokens, actualTokens: usage.totalTokens)
        if span.isRecording {
            span.attributes["gen_ai.usage.input_tokens"] = usage.inputTokens
            span.attributes["gen_ai.usage.output_tokens"] = usage.outputTokens
        }
        // Guard (out): the agent sees the answer redacted, or not at all (it is paid for either way).
        if request.operation == .chat, let guardrails = governor.guardrails,
            let plan = guardrails.plan(admission.call.caller, kind: .model, name: request.alias, direction: .out),
            case .object(let answer)? = try? JSONParser.parse(Array(out.readableBytesView))
        {
            do {
                if let redacted = try guardrails.checkOut(
                    .object(answer), keys: Self.answerTextKeys, plan: plan, caller: admission.call.caller, name: request.alias,
                    requestID: admission.call.requestID)
                {
                    out = ByteBuffer(bytes: JSONWriter.bytes(redacted))
                }
            } catch {
                governor.settle(admission, CallOutcome(
                    usage: usage, cost: cost, deploymentID: deployment.settings.id, provider: deployment.provider.id, upstreamModel: deployment.settings.model,
                    attempts: attempts, outcome: .error, status: error.status, errorCode: error.code))
                throw .settled(error)
            }
        }
        governor.settle(admission, CallOutcome(
            usage: usage, cost: cost, deploymentID: deployment.settings.id, provider: deployment.provider.id, upstreamModel: deployment.settings.model,
            attempts: attempts, outcome: .success, status: 200))
        let info = ModelResponseInfo(
            requestID: admission.call.requestID, deploymentID: deployment.settings.id, provider: deployment.provider.id, attempts: attempts,
            overheadMs: max(0, overhead.milliseconds), queuedMs: queued.milliseconds, cost: cost)
        return .complete(info: info, body: out)
    }
}

/// A failed first attempt handed from the event-loop path to the async one.
struct Resume: Sendable {
    fileprivate let failure: ModelGateway.AttemptFailure
    let sent: ContinuousClock.Instant
}

/// A stream relayed on an event loop: upstream events in, the agent's events out (translated
/// when the formats differ), settled exactly once however it ends. Loop-bound.
public final class LoopStreamSession: @unchecked Sendable {
    public let info: ModelResponseInfo
    private var parser: ServerSentEventParser
    private var transcoder: StreamTranscoder
    private let estimatedInputTokens: Int
    private let admission: CallGovernor.Admission
    private let settle: StreamSettlement
    private var settled = false

    init(
        info: ModelResponseInfo, transcoder: StreamTranscoder, maxEventBytes: Int, estimatedInputTokens: Int, admission: CallGovernor.Admission,
        settle: @escaping StreamSettlement
    ) {
        self.info = info
        self.parser = ServerSentEventParser(maxEventBytes: maxEventBytes)
        self.transcoder = transcoder
        self.estimatedInputTokens = estimatedInputTokens
        self.admission = admission
        self.settle = settle
    }

    deinit {
        if !settled { settle(TokenUsage(inputTokens: estimatedInputTokens), .partial, 499, nil) }
    }

    public var agentID: String { admission.call.agent.id }

    /// Calls `handler` (from any thread) if the agent is disabled while the stream runs, at
    /// once if that happened since admission. Cancel the registration when the stream ends.
    public func watchCutOff(_ handler: @escaping @Sendable () -> Void) -> CutOffSignal.Registration? {
        admission.watchCutOff(handler)
    }

    /// An upstream event outgrew `gateway.max_stream_event_bytes`: stop reading the upstream
    /// and end the stream as broken off.
    public var overflowed: Bool { parser.overflowed }

    /// The agent's bytes for one piece of the upstream body (empty until an event completes).
    public func consume(_ chunk: ByteBuffer) -> [UInt8] {
        var out: [UInt8] = []
        for event in parser.consume(chunk.readableBytesView) { out += transcoder.transcode(event) }
        return out
    }

    /// The upstream ended (`completed`) or broke off: the last bytes for the agent.
    public func finish(completed: Bool) -> [UInt8] {
        var tail: [UInt8] = []
        if let event = parser.finish() { tail += transcoder.transcode(event) }
        tail += ModelStream.ending(&transcoder, parser, completed: completed)
        return tail
    }

    /// The agent was disabled: the error event that ends its stream, and the settlement
    /// (`status`: 200 when the stream had started, else the 401 the agent gets instead).
    public func cutOff(status: Int) -> [UInt8] {
        let tail = transcoder.finish(completed: false, interruption: .agentDisabled(admission.call.agent.id))
        if !settled {
            settled = true
            let (usage, outcome) = ModelStream.outcome(transcoder: transcoder, estimatedInputTokens: estimatedInputTokens, upstreamBroke: true, agentGone: false)
            settle(usage, outcome, status, "agent_disabled")
        }
        return tail
    }

    /// Settles the call with the usage the upstream reported, or an estimate of what was delivered.
    public func end(upstreamBroke: Bool, agentGone: Bool) {
        guard !settled else { return }
        settled = true
        let (usage, outcome) = ModelStream.outcome(transcoder: transcoder, estimatedInputTokens: estimatedInputTokens, upstreamBroke: upstreamBroke, agentGone: agentGone)
        settle(usage, outcome, agentGone ? 499 : 200, ModelStream.errorCode(parser))
    }

    /// Handed to the async path before anything reached the agent: nothing to settle here.
    func abandon() { settled = true }
}

/// What `startOnLoop` decided.
public enum LoopStart: Sendable {
    /// Not for the event-loop path, and nothing was changed: serve it with `handle`.
    case declined
    /// Refused at admission (already recorded): answer with this error.
    case refused(GatewayError)
    /// Admitted and holding the first deployment: send this upstream with the loop client.
    case send(LoopAttempt)
    /// Admitted, but the first deployment cannot take it without waiting: finish with `continueAsync`.
    case continueAsync(LoopContinuation)
}

/// What `finishOnLoop` decided.
public enum LoopFinish: Sendable {
    case done(ModelResult)
    case continueAsync(LoopContinuation)
}

/// A call admitted on an event loop, holding its first deployment. A class: it travels
/// through several enums and closures per call, and copying its fields each time showed.
public final class LoopAttempt: Sendable {
    public let target: UpstreamTarget
    public let headers: [(String, String)]
    public let body: ByteBuffer
    public let timeout: Duration
    public let maxResponseBytes: Int
    /// Send with `postStreaming` and relay through `openStreamOnLoop`.
    public let stream: Bool
    let request: ModelRequest
    let chain: [DeploymentState]
    let deployment: DeploymentState
    let admission: CallGovernor.Admission
    let span: any Span
    let sent: ContinuousClock.Instant

    init(
        target: UpstreamTarget, headers: [(String, String)], body: ByteBuffer, timeout: Duration, maxResponseBytes: Int, stream: Bool,
        request: ModelRequest, chain: [DeploymentState], deployment: DeploymentState, admission: CallGovernor.Admission, span: any Span,
        sent: ContinuousClock.Instant
    ) {
        self.target = target
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.maxResponseBytes = maxResponseBytes
        self.stream = stream
        self.request = request
        self.chain = chain
        self.deployment = deployment
        self.admission = admission
        self.span = span
        self.sent = sent
    }
}

/// An admitted call that the async path finishes.
public struct LoopContinuation: Sendable {
    let request: ModelRequest
    let chain: [DeploymentState]
    let admission: CallGovernor.Admission
    let span: any Span
    let resume: Resume?
}
