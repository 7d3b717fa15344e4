import InterlockPolicy

// Policy evaluation benchmark: time per evaluation of typical rules, against the same check
// written directly in Swift, in one run. bench/policy/run records the figures.

struct Stats {
    var median: Double
    var p99: Double
}

func measure(_ iterations: Int, _ body: () -> Bool) -> Stats {
    var samples: [Double] = []
    samples.reserveCapacity(iterations)
    let clock = ContinuousClock()
    var sink = 0
    for _ in 0..<iterations {
        let start = clock.now
        if body() { sink &+= 1 }
        let elapsed = clock.now - start
        samples.append(Double(elapsed.components.attoseconds) / 1e9 + Double(elapsed.components.seconds) * 1e9)
    }
    precondition(sink >= 0)
    samples.sort()
    return Stats(median: samples[samples.count / 2], p99: samples[samples.count * 99 / 100])
}

let iterations = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 200_000
var bccMap = CELMap()
bccMap.insert(.string("to"), .list([.string("ceo@corp.example")]))
bccMap.insert(.string("bcc"), .list([.string("a@corp.example"), .string("b@corp.example"), .string("c@corp.example")]))
bccMap.insert(.string("subject"), .string("Quarterly numbers"))
let args = CELValue.map(bccMap)
let bccNative = ["a@corp.example", "b@corp.example", "c@corp.example"]

let rules: [(String, String)] = [
    ("bcc_inside_company", #"args.bcc.all(a, a.endsWith("@corp.example"))"#),
    ("target_and_scope", #"target.name.startsWith("erp.delete_") && !("erp-admin" in agent.scopes)"#),
    ("run_spend", #"run.spent_usd > 2.0 && target.kind == "model" && target.name != "fast""#),
    ("business_hours", #"request.time.getHours("Europe/Berlin") >= 8 && request.time.getHours("Europe/Berlin") < 18"#),
]
let input = PolicyInput(
    agent: .init(id: "mailer", owner: "comms", region: "eu", scopes: ["mail", "crm-read"]), run: .init(id: "run-1", calls: 4, spentTokens: 1200, spentUSD: 0.4),
    target: .init(kind: "tool", name: "mail.send", namespace: "mail", sideEffects: "write", risk: "medium"), args: { args }, requestID: "req-1",
    timeMs: 1_790_000_000_000, region: "eu")

print("| rule | evaluations | median | p99 | direct Swift median | ratio |")
print("|---|---|---|---|---|---|")
let direct = measure(iterations) { bccNative.allSatisfy { $0.hasSuffix("@corp.example") } }
for (name, condition) in rules {
    let program = try CELProgram(condition, environment: PolicyEngine.environment)
    let engine = try PolicyEngine(rules: [PolicyRule(name: name, condition: condition, effect: .deny)])
    // Rule evaluation alone (variables built once), then the whole policy stage for one call.
    var slots = [CELValue?](repeating: nil, count: program.variableNames.count)
    slots[program.slot(of: "args")!] = args
    let sample = engine.decide(input)
    _ = sample
    let only: Stats
    if name == "bcc_inside_company" {
        only = measure(iterations) { (try? program.evaluate(slots: slots))?.boolValue == true }
        print("| `\(condition)` (expression only) | \(iterations) | \(String(format: "%.2f", only.median / 1000)) µs | \(String(format: "%.2f", only.p99 / 1000)) µs | \(String(format: "%.3f", direct.median / 1000)) µs | \(String(format: "%.1f", only.median / direct.median))x |")
    }
    let stage = measure(iterations) { engine.decide(input).effect == .deny }
    print("| `\(condition)` (policy stage: input built, rule evaluated, decision) | \(iterations) | \(String(format: "%.2f", stage.median / 1000)) µs | \(String(format: "%.2f", stage.p99 / 1000)) µs | | |")
}
