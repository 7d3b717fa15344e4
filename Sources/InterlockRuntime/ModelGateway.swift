public import InterlockCore
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
    private let aliases: [String: ModelAliasSettings]
    /// Each alias followed by its fallbacks (breadth first, each once), fixed at start.
    private let aliasChains: [String: [ModelAliasSettings]]
    private let deployments: [String: DeploymentState]
    private let httpUpstream: any ModelUpstream
    private let mockUpstream: any ModelUpstream
    private let logger: Logger
    /// `logging.log_prompts`: log each request body (off by default; prompts often hold personal data).
    private let logPrompts: Bool
    /// Largest non-streamed upstream answer accepted.
    private let maxResponseBytes = 64 * 1024 * 1024

    public init(configuration: InterlockConfiguration, governor: CallGovernor, httpUpstream: any ModelUpstream, mockUpstream: any ModelUpstream, logger: Logger) {
        self.governor = governor
        self.settings = configuration.gateway
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
        var chains: [String: [ModelAliasSettings]] = [:]
        for alias in configuration.models {
            var chain: [ModelAliasSettings] = []
            var visited = Set<String>()
            var queue = [alias.name]
            while !queue.isEmpty {
                let name = queue.removeFirst()
                guard visited.insert(name).inserted, let settings = self.aliases[name] else { continue }
                chain.append(settings)
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

    /// The aliases an agent may call, sorted.
    public func models(for agent: AgentSettings) -> [String] {
        let all = agent.models.contains("*") ? Array(aliases.keys) : agent.models.filter { aliases[$0] != nil }
        return all.sorted()
    }

    public func deploymentState(_ id: String) -> DeploymentState? { deployments[id] }

    public var allDeployments: [DeploymentState] { deployments.values.sorted { $0.settings.id < $1.settings.id } }

    public func queueDepths() -> [(String, Int)] {
        allDeployments.map { ($0.settings.id, $0.limiter.queueDepth) }
    }

    // MARK: - The call

    public func handle(_ request: ModelRequest, agent: AgentSettings, requestID: String, traceParent: String?, traceState: String?) async throws -> ModelResult {
        guard aliases[request.alias] != nil else { throw GatewayError.unknownModel(request.alias) }
        // Authorize: default deny.
        try governor.authorize(agent, kind: .model, target: request.alias)
        let chain = candidateChain(for: request.alias)
        let expected = request.expectedUsage(defaultMaxOutputTokens: settings.defaultMaxOutputTokens)
        // Reserve for the most expensive deployment the call could land on.
        let reserve = chain.map { $0.settings.price.cost(of: expected) }.max() ?? .zero
        let call = GovernedCall(
            requestID: requestID, agent: agent, targetKind: .model, target: request.alias, operation: request.operation.rawValue,
            stream: request.stream, expectedTokens: expected.totalTokens, expectedCost: reserve, traceParent: traceParent, traceState: traceState)
        let admission = try await governor.admit(call)
        if logPrompts {
            logger.info("model request body", metadata: [
                "interlock.request.id": "\(requestID)", "interlock.agent.id": "\(agent.id)",
                "interlock.prompt": "\(String(decoding: request.body, as: UTF8.self))",
            ])
        }
        let span = startSpan("\(request.operation == .chat ? "chat" : "embeddings") \(request.alias)", ofKind: .client)
        span.attributes["gen_ai.operation.name"] = request.operation == .chat ? "chat" : "embeddings"
        span.attributes["gen_ai.request.model"] = request.alias
        span.attributes["interlock.agent.id"] = agent.id
        span.attributes["interlock.request.id"] = requestID
        if let maxTokens = request.maxOutputTokens { span.attributes["gen_ai.request.max_tokens"] = maxTokens }
        do {
            let result = try await execute(request, chain: chain, admission: admission, span: span)
            if case .complete = result { span.end() }
            return result
        } catch {
            let gatewayError = (error as? GatewayError) ?? GatewayError(kind: .internal, code: "internal_error", message: "Interlock failed to process the request.")
            span.attributes["error.type"] = gatewayError.code
            span.setStatus(SpanStatus(code: .error, message: gatewayError.code))
            span.end()
            governor.settle(admission, CallOutcome(outcome: .error, status: gatewayError.status, errorCode: gatewayError.code))
            throw gatewayError
        }
    }

    /// The deployments to try, in order: the alias's, then each fallback alias's.
    private func candidateChain(for alias: String) -> [DeploymentState] {
        var chain: [DeploymentState] = []
        var generator = SystemRandomNumberGenerator()
        for settings in aliasChains[alias] ?? [] {
            let states = settings.deployments.compactMap { deployments[$0.id] }
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
            let ranked = ModelRouter.rank(candidates, strategy: settings.strategy, expected: .zero, using: &generator)
            chain += ranked.compactMap { deployments[$0] }
        }
        return chain
    }

    private enum AttemptFailure: Error {
        /// Try again (same deployment after backoff, or the next one).
        case retryable(status: Int, message: String, retryAfter: Duration?)
        /// The request itself is wrong: answer the agent, no retry, no fallback.
        case final(GatewayError)
    }

    private func execute(_ request: ModelRequest, chain: [DeploymentState], admission: CallGovernor.Admission, span: any Span) async throws -> ModelResult {
        guard !chain.isEmpty else {
            throw GatewayError(kind: .unavailable, code: "no_deployment_available", message: "No deployment of '\(request.alias)' is available right now (circuit breakers open or providers not configured).", retryAfterSeconds: 5)
        }
        let clock = ContinuousClock()
        var attempts = 0
        var upstreamTime = Duration.zero
        var waited = admission.queued
        var lastError: GatewayError?
        let expected = request.expectedUsage(defaultMaxOutputTokens: settings.defaultMaxOutputTokens)
        var headers: [(String, String)] = [("x-request-id", admission.call.requestID)]
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(span.context, into: &carrier, using: DictionaryInjector())
        if let traceParent = carrier["traceparent"] ?? admission.call.traceParent { headers.append(("traceparent", traceParent)) }
        if let traceState = carrier["tracestate"] ?? admission.call.traceState { headers.append(("tracestate", traceState)) }

        for deployment in chain {
            // Translate first: a request this provider cannot take must not hold a permit or tokens.
            let body = try RequestPreparation.body(for: request, provider: deployment.provider, deployment: deployment.settings, defaultMaxTokens: settings.defaultMaxOutputTokens)
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
            // Once a result is returned, its settlement reconciles the tokens; every other exit gives them back.
            var handedOff = false
            defer { if !handedOff { deployment.limiter.reconcile(estimatedTokens: expected.totalTokens, actualTokens: 0) } }
            let timeout = Duration.milliseconds(deployment.settings.timeoutMs ?? settings.upstreamTimeoutMs)
            let upstreamCall = UpstreamCall(
                endpoint: request.operation == .chat ? deployment.chatEndpoint : deployment.embeddingsEndpoint, provider: deployment.provider, deployment: deployment.settings, operation: request.operation, format: deployment.provider.kind.nativeFormat,
                body: body, stream: request.stream, headers: headers, timeout: timeout)
            var attempt = 0
            while attempt < settings.retryMaxAttempts {
                attempt += 1
                attempts += 1
                let sent = clock.now
                do {
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
                        let backoff = retryAfter ?? jitteredBackoff(attempt: attempt)
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

    private func jitteredBackoff(attempt: Int) -> Duration {
        let ceiling = min(Double(settings.retryMaxBackoffMs), Double(settings.retryInitialBackoffMs) * pow2(attempt - 1))
        return .milliseconds(Double.random(in: ceiling / 2...max(ceiling / 2, ceiling)))
    }

    private func pow2(_ exponent: Int) -> Double { Double(1 << min(max(exponent, 0), 20)) }

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
            let upstreamMessage = ResponseTranslation.errorMessage(fromBody: bytes).map { SecretRedaction.redact($0, secrets: [deployment.provider.apiKey]) }
            switch response.status {
            case 429, 408, 409, 500...599:
                throw AttemptFailure.retryable(
                    status: response.status, message: "The upstream for '\(request.alias)' answered \(response.status)" + (upstreamMessage.map { ": \($0)" } ?? "."),
                    retryAfter: response.retryAfter)
            case 401, 403, 404:
                // Interlock's own credentials or deployment name are wrong: another deployment may work.
                throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' refused Interlock's credentials or deployment (HTTP \(response.status)).", retryAfter: nil)
            default:
                throw AttemptFailure.final(GatewayError(
                    kind: .invalidRequest, code: "upstream_rejected_request",
                    message: "The model provider rejected the request" + (upstreamMessage.map { ": \($0)" } ?? "."), status: response.status))
            }
        }
        deployment.record(success: true)
        span.attributes["gen_ai.provider.name"] = deployment.provider.kind.rawValue
        span.attributes["gen_ai.response.model"] = deployment.settings.model
        span.attributes["interlock.deployment"] = deployment.settings.id
        let created = governor.nowMs() / 1000

        if !request.stream {
            let buffer: ByteBuffer
            do {
                buffer = try await response.body.collect(upTo: maxResponseBytes)
            } catch {
                throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' broke off its answer.", retryAfter: nil)
            }
            let (attempts, overhead, queued) = timing(sent.duration(to: clock.now))
            let upstreamBytes = Array(buffer.readableBytesView)
            var usage = UsageReading.fromBody(upstreamBytes, format: native) ?? TokenUsage(inputTokens: request.estimatedInputTokens)
            var out = buffer
            if native != request.format {
                guard case .object(let object)? = try? JSONParser.parse(upstreamBytes) else {
                    throw AttemptFailure.retryable(status: 502, message: "The upstream for '\(request.alias)' sent an answer that is not JSON.", retryAfter: nil)
                }
                let translated: JSONObject =
                    request.format == .openAI
                    ? ResponseTranslation.openAIResponse(fromAnthropic: object, model: request.alias, created: created)
                    : ResponseTranslation.anthropicResponse(fromOpenAI: object, model: request.alias)
                out = ByteBuffer(bytes: JSONWriter.bytes(.object(translated)))
            }
            if request.operation == .embeddings { usage.outputTokens = 0 }
            let cost = deployment.settings.price.cost(of: usage)
            deployment.limiter.reconcile(estimatedTokens: admission.call.expectedTokens, actualTokens: usage.totalTokens)
            span.attributes["gen_ai.usage.input_tokens"] = usage.inputTokens
            span.attributes["gen_ai.usage.output_tokens"] = usage.outputTokens
            governor.settle(admission, CallOutcome(
                usage: usage, cost: cost, deploymentID: deployment.settings.id, provider: deployment.provider.id, upstreamModel: deployment.settings.model,
                attempts: attempts, outcome: .success, status: 200))
            let info = ModelResponseInfo(
                requestID: admission.call.requestID, deploymentID: deployment.settings.id, provider: deployment.provider.id, attempts: attempts,
                overheadMs: max(0, overhead.milliseconds), queuedMs: queued.milliseconds, cost: cost)
            return .complete(info: info, body: out)
        }

        // Streaming: read until the first event arrives before committing to this deployment,
        // so a stream that fails before its first byte can still be retried elsewhere.
        var iterator = response.body.makeIterator()
        var parser = ServerSentEventParser()
        var transcoder = StreamTranscoder(
            from: native, to: request.format, alias: request.alias, clientWantsUsage: request.clientWantsStreamUsage, created: created,
            requestID: admission.call.requestID)
        var first: [UInt8] = []
        var ended = false
        while first.isEmpty, !ended {
            let chunk: ByteBuffer?
            do {
                chunk = try await iterator.next()
            } catch {
                throw AttemptFailure.retryable(status: 502, message: "The upstream stream for '\(request.alias)' failed before its first event.", retryAfter: nil)
            }
            guard let chunk else { ended = true; break }
            for event in parser.consume(chunk.readableBytesView) { first += transcoder.transcode(event) }
        }
        if first.isEmpty {
            throw AttemptFailure.retryable(status: 502, message: "The upstream stream for '\(request.alias)' ended without any event.", retryAfter: nil)
        }
        let (attempts, overhead, queued) = timing(sent.duration(to: clock.now))
        let info = ModelResponseInfo(
            requestID: admission.call.requestID, deploymentID: deployment.settings.id, provider: deployment.provider.id, attempts: attempts,
            overheadMs: max(0, overhead.milliseconds), queuedMs: queued.milliseconds, cost: nil)
        let governor = self.governor
        let stream = ModelStream(
            iterator: iterator, parser: parser, transcoder: transcoder, pending: first, upstreamEnded: ended,
            estimatedInputTokens: request.estimatedInputTokens
        ) { usage, outcome, status in
            let cost = deployment.settings.price.cost(of: usage)
            deployment.limiter.reconcile(estimatedTokens: admission.call.expectedTokens, actualTokens: usage.totalTokens)
            span.attributes["gen_ai.usage.input_tokens"] = usage.inputTokens
            span.attributes["gen_ai.usage.output_tokens"] = usage.outputTokens
            if outcome != .success { span.attributes["error.type"] = "stream_incomplete" }
            span.end()
            governor.settle(admission, CallOutcome(
                usage: usage, cost: cost, deploymentID: deployment.settings.id, provider: deployment.provider.id, upstreamModel: deployment.settings.model,
                attempts: attempts, outcome: outcome, status: status))
        }
        return .stream(info: info, stream: stream)
    }
}

/// Carries trace context into a string dictionary, then into upstream headers.
private struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}
