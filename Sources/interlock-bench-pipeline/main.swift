// CPU per call of the governed pipeline on the event-loop path, in process and without
// network: authenticate, parse, `startOnLoop` (grants, admission, routing, breaker, limiter,
// request preparation), `finishOnLoop` with a canned upstream answer (usage, cost,
// settlement, metrics, ledger append), and the ledger's batched SQLite write.
// Run with `bench/pipeline`.
import AsyncHTTPClient
import FoundationEssentials
import InterlockConfig
import InterlockCore
import InterlockProviders
import InterlockRuntime
import InterlockStore
import Logging
import NIOCore
import NIOHTTP1

let arguments = CommandLine.arguments
let calls = arguments.count > 1 ? Int(arguments[1]) ?? 200_000 : 200_000
let root = arguments.count > 2 ? arguments[2] : "bench"

let yaml = """
    providers:
      upstream: { type: openai, base_url: "http://127.0.0.1:9/v1", api_key: sk-bench-0000000000000000 }
    models:
      bench:
        deployments:
          - { provider: upstream, model: bench-model, price: { input_per_mtok: 0.15, output_per_mtok: 0.60 } }
    agents:
      - { id: bench, api_key: bench-agent-key-0000000001, models: [bench], budgets: { daily_usd: 1000000 }, limits: { rpm: 100000000, tpm: 100000000000 } }
    """
let configuration = try ConfigLoader.parse(yaml, file: "pipeline.yaml", environment: [:])
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("interlock-bench-pipeline-\(UInt32.random(in: 0...UInt32.max))")
try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: directory) }
let store = try await SQLiteStore.open(path: directory.appendingPathComponent("bench.sqlite").path)
try await store.migrate()
let logger = Logger(label: "bench")
let ledger = UsageLedgerWriter(store: store, flushInterval: .seconds(3600), maxBatch: 500, logger: logger)
let audit = try await AuditLog.open(
    store: store, node: "bench", flushInterval: .seconds(3600), maxBatch: 500, logger: logger, wallClockMs: { Int64(Date().timeIntervalSince1970 * 1000) })
let tokens = try await TokenService.open(store: store, settings: configuration.auth, nowMs: Int64(Date().timeIntervalSince1970 * 1000))
let governor = try await CallGovernor.open(configuration: configuration, store: store, ledger: ledger, audit: audit, tokens: tokens, logger: logger)
let gateway = ModelGateway(
    configuration: configuration, governor: governor, httpUpstream: HTTPModelUpstream(client: .shared), mockUpstream: MockModelUpstream(), logger: logger)

let requestBody = Array(try Data(contentsOf: URL(fileURLWithPath: "\(root)/request.json")))
var answerHeaders = HTTPHeaders()
answerHeaders.add(name: "content-type", value: "application/json")
let answer = LoopHTTPResponse(
    status: 200, headers: answerHeaders, body: ByteBuffer(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: "\(root)/chat.json")))))
let key = "bench-agent-key-0000000001"

func measure(_ name: String, count: Int = calls, _ body: () throws -> Void) rethrows -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    for _ in 0..<count { try body() }
    let micros = start.duration(to: clock.now).milliseconds * 1000 / Double(count)
    print("\(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", micros)) µs/call")
    return micros
}

// Warm up caches (metrics handles, dictionaries).
for _ in 0..<1000 {
    let agent = try governor.authenticate(apiKey: key)
    let request = try ModelRequest.parse(body: requestBody, format: .openAI, operation: .chat)
    guard case .send(let attempt) = gateway.startOnLoop(request, caller: agent, requestID: "warm", traceParent: nil, traceState: nil, maxResponseBytes: 1 << 26),
        case .done = gateway.finishOnLoop(attempt, .success(answer))
    else { fatalError("the pipeline did not take the call") }
}
await ledger.flush()
await audit.writer.flush()

print("calls: \(calls)")
let agent = try governor.authenticate(apiKey: key)
let parsed = try ModelRequest.parse(body: requestBody, format: .openAI, operation: .chat)
_ = try measure("authenticate (API key: SHA-256, lookup)") { _ = try governor.authenticate(apiKey: key) }
_ = try measure("parse request (JSON scan, parameter checks)") { _ = try ModelRequest.parse(body: requestBody, format: .openAI, operation: .chat) }
// A long prompt (64 KiB of prose in one message, as agents with long contexts send) and a
// long answer (16 KiB) whose usage comes last: the JSON scans grow with them.
let sentence = #"The agent read the ticket, said \"on it\", and opened the runbook.\n"#
let longPrompt = String(repeating: sentence, count: 65_536 / sentence.utf8.count)
let longRequest = Array(#"{"model":"bench","messages":[{"role":"system","content":"You help."},{"role":"user","content":"\#(longPrompt)"}],"max_tokens":64}"#.utf8)
let longAnswer = Array(
    #"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"\#(longPrompt.prefix(16_384))"},"finish_reason":"stop"}],"usage":{"prompt_tokens":16000,"completion_tokens":4000,"total_tokens":20000}}"#
        .utf8)
_ = try measure("parse request, 64 KiB prompt", count: max(1, calls / 50)) { _ = try ModelRequest.parse(body: longRequest, format: .openAI, operation: .chat) }
let longValue = JSONValue.object(["role": "user", "content": .string(longPrompt)])
var written = 0
_ = measure("write a 64 KiB message as JSON", count: max(1, calls / 50)) { written &+= JSONWriter.bytes(longValue).count }
_ = try measure("find usage in a 16 KiB answer", count: max(1, calls / 20)) { _ = try longAnswer.withUnsafeBytes { try JSONParser.member(named: "usage", in: $0) } }
// A stream's events as the relay reads them: the bench stream, in 4 KiB reads, repeated to 64 KiB.
let streamBytes = Array(try Data(contentsOf: URL(fileURLWithPath: "\(root)/stream.sse")))
var streamReads: [ByteBuffer] = []
var streamText: [UInt8] = []
while streamText.count < 65_536 { streamText += streamBytes }
for start in stride(from: 0, to: streamText.count, by: 4096) { streamReads.append(ByteBuffer(bytes: streamText[start..<min(start + 4096, streamText.count)])) }
var streamEvents = 0
_ = measure("read SSE events from a 64 KiB stream", count: max(1, calls / 50)) {
    var parser = ServerSentEventParser()
    for read in streamReads { streamEvents &+= parser.consume(read.readableBytesView).count }
}
var relayed = 0
_ = measure("relay them (OpenAI pass-through, usage)", count: max(1, calls / 50)) {
    var parser = ServerSentEventParser()
    var transcoder = StreamTranscoder(from: .openAI, to: .openAI, alias: "bench", clientWantsUsage: false, created: 0, requestID: "r")
    for read in streamReads {
        for event in parser.consume(read.readableBytesView) { relayed &+= transcoder.transcode(event).count }
    }
}
var index = 0
let total = try measure("whole call: authenticate … finishOnLoop") {
    index += 1
    let agent = try governor.authenticate(apiKey: key)
    let request = try ModelRequest.parse(body: requestBody, format: .openAI, operation: .chat)
    guard case .send(let attempt) = gateway.startOnLoop(request, caller: agent, requestID: "r\(index)", traceParent: nil, traceState: nil, maxResponseBytes: 1 << 26),
        case .done = gateway.finishOnLoop(attempt, .success(answer))
    else { fatalError("the pipeline did not take the call") }
}
_ = measure("startOnLoop + finishOnLoop only") {
    guard case .send(let attempt) = gateway.startOnLoop(parsed, caller: agent, requestID: "r", traceParent: nil, traceState: nil, maxResponseBytes: 1 << 26),
        case .done = gateway.finishOnLoop(attempt, .success(answer))
    else { fatalError("the pipeline did not take the call") }
}
// Authentication by access token instead of API key: an ES256 verification the first time a
// token is seen, a cache lookup after that.
var distinctTokens: [String] = []
for _ in 0..<max(1, calls / 200) {
    distinctTokens.append(try await tokens.issue(for: agent.agent, scopes: agent.agent.grants.scopes, nowMs: Int64(Date().timeIntervalSince1970 * 1000)))
}
let verifyClock = ContinuousClock()
var verifyStart = verifyClock.now
for token in distinctTokens { _ = try await tokens.verify(token, nowMs: Int64(Date().timeIntervalSince1970 * 1000)) }
let uncachedMicros = verifyStart.duration(to: verifyClock.now).milliseconds * 1000 / Double(distinctTokens.count)
print("\("access token, first use (ES256 verify)".padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", uncachedMicros)) µs/call (\(distinctTokens.count) tokens)")
let cachedCalls = max(1, calls / 10)
verifyStart = verifyClock.now
for index in 0..<cachedCalls { _ = try governor.authenticate(apiKey: distinctTokens[index % distinctTokens.count]) }
let cachedMicros = verifyStart.duration(to: verifyClock.now).milliseconds * 1000 / Double(cachedCalls)
print("\("access token, cached (authenticate)".padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", cachedMicros)) µs/call")

let clock = ContinuousClock()
let backlog = ledger.backlog
let flushStart = clock.now
await ledger.flush()
let flushMicros = flushStart.duration(to: clock.now).milliseconds * 1000 / Double(max(backlog, 1))
print("\("usage ledger write (SQLite, batches of 500)".padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", flushMicros)) µs/record (\(backlog) records)")
let auditBacklog = audit.writer.backlog
let auditStart = clock.now
await audit.writer.flush()
let auditMicros = auditStart.duration(to: clock.now).milliseconds * 1000 / Double(max(auditBacklog, 1))
print("\("audit write (link, hash, SQLite, batches of 500)".padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", auditMicros)) µs/record (\(auditBacklog) records)")
print("\("pipeline total per call".padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.2f", total + flushMicros + auditMicros)) µs")
try await store.close()

