import FoundationEssentials
public import InterlockPolicy
import InterlockCore
import Yams

/// One case of an `interlock policy test` file: a call as policy sees it, and the decision
/// the rules must reach.
public struct PolicyTestCase: Sendable {
    public var name: String
    public var line: Int
    public var input: PolicyInput
    public var expect: PolicyDecision.Effect
    /// The rule that must decide, when the case names one.
    public var rule: String?
}

/// Reads policy test cases (YAML) with the same error reporting as the config file:
///
///     config: interlock.yaml        # the rules under test (optional: or --config)
///     cases:
///       - name: BCC outside the company is refused
///         input:
///           agent: {id: mailer, scopes: ["tool:mail.send"]}
///           target: {kind: tool, name: mail.send, side_effects: write}
///           args: {to: ["a@corp.example"], bcc: ["x@gmail.com"]}
///           run: {spent_usd: 0.5}
///           request: {time: "2026-11-21T10:00:00Z"}
///         expect: deny
///         rule: no-external-bcc
public enum PolicyTestLoader {
    /// The cases of a file, and the configuration it names (`config:`, relative to the file).
    public struct File: Sendable {
        public var cases: [PolicyTestCase]
        public var config: String?
    }

    public static func load(path: String, environment: [String: String]) throws(ConfigError) -> [PolicyTestCase] {
        try loadFile(path: path, environment: environment).cases
    }

    public static func loadFile(path: String, environment: [String: String]) throws(ConfigError) -> File {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, path: "", message: "cannot read the file")])
        }
        let text = String(decoding: data, as: UTF8.self)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, path: "", message: "invalid YAML: \(error)")])
        }
        guard let root else { throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, path: "", message: "the file is empty")]) }
        let reader = ConfigReader(file: path, environment: environment)
        var cases: [PolicyTestCase] = []
        var config: String?
        if let top = ConfigNode(node: root, path: "", reader: reader).mapping(allowed: ["config", "cases"]) {
            if let named = top["config"]?.nonEmptyString() {
                config = named.hasPrefix("/") ? named : URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent(named).path
            }
            for item in top["cases"]?.sequence() ?? [] {
                if let parsed = readCase(item) { cases.append(parsed) }
            }
        }
        guard reader.diagnostics.isEmpty else { throw ConfigError(diagnostics: reader.diagnostics) }
        return File(cases: cases, config: config)
    }

    private static func readCase(_ item: ConfigNode) -> PolicyTestCase? {
        guard let fields = item.mapping(allowed: ["name", "input", "expect", "rule"]) else { return nil }
        guard let name = fields["name"]?.nonEmptyString() else {
            if fields["name"] == nil { item.report("missing required key 'name'") }
            return nil
        }
        guard let expectNode = fields["expect"] else {
            item.report("missing required key 'expect' (allow, deny or require_approval)")
            return nil
        }
        guard let expect = expectNode.oneOf(PolicyDecision.Effect.self, [.allow, .deny, .requireApproval]) else { return nil }
        guard let inputNode = fields["input"], let input = inputNode.mapping(allowed: ["agent", "user", "actors", "run", "target", "args", "request"]) else {
            if fields["input"] == nil { item.report("missing required key 'input'") }
            return nil
        }
        var agent = PolicyInput.Agent(id: "agent")
        if let node = input["agent"], let agentFields = node.mapping(allowed: ["id", "owner", "region", "description", "scopes"]) {
            agent.id = agentFields["id"]?.string() ?? agent.id
            agent.owner = agentFields["owner"]?.string() ?? ""
            agent.region = agentFields["region"]?.string() ?? ""
            agent.description = agentFields["description"]?.string() ?? ""
            agent.scopes = agentFields["scopes"]?.stringList() ?? []
        }
        guard let targetNode = input["target"], let targetFields = targetNode.mapping(allowed: [
            "kind", "name", "namespace", "operation", "side_effects", "risk", "idempotent", "owner",
        ]) else {
            if input["target"] == nil { inputNode.report("missing required key 'target'") }
            return nil
        }
        guard let kind = targetFields["kind"]?.oneOf(TargetKindName.self, TargetKindName.allCases), let targetName = targetFields["name"]?.nonEmptyString() else {
            if targetFields["kind"] == nil { targetNode.report("missing required key 'kind' (model, tool or agent)") }
            if targetFields["name"] == nil { targetNode.report("missing required key 'name'") }
            return nil
        }
        let target = PolicyInput.Target(
            kind: kind.rawValue, name: targetName, namespace: targetFields["namespace"]?.string() ?? "", operation: targetFields["operation"]?.string() ?? "",
            sideEffects: targetFields["side_effects"]?.string() ?? "", risk: targetFields["risk"]?.string() ?? "",
            idempotent: targetFields["idempotent"]?.bool() ?? false, owner: targetFields["owner"]?.string() ?? "")
        var run = PolicyInput.Run()
        if let node = input["run"], let runFields = node.mapping(allowed: ["id", "parent_id", "step", "calls", "spent_tokens", "spent_usd"]) {
            run.id = runFields["id"]?.string() ?? ""
            run.parentID = runFields["parent_id"]?.string() ?? ""
            run.calls = runFields["calls"]?.int(minimum: 0) ?? 0
            run.step = runFields["step"]?.int(minimum: 0) ?? run.calls
            run.spentTokens = runFields["spent_tokens"]?.int(minimum: 0) ?? 0
            run.spentUSD = runFields["spent_usd"]?.double(minimum: 0) ?? 0
        }
        var timeMs: Int64 = 0
        var requestID = "test"
        var region = ""
        if let node = input["request"], let requestFields = node.mapping(allowed: ["time", "id", "region"]) {
            if let timeNode = requestFields["time"], let text = timeNode.string() {
                if let value = try? CELProgram("timestamp('\(text.replacing("'", with: ""))')").evaluate([:]), case .timestamp(let time) = value {
                    timeMs = time.seconds * 1000 + Int64(time.nanos / 1_000_000)
                } else {
                    timeNode.report("expected an RFC 3339 time such as 2026-11-21T10:00:00Z, found '\(text)'")
                }
            }
            requestID = requestFields["id"]?.string() ?? requestID
            region = requestFields["region"]?.string() ?? ""
        }
        let args = CELValue(json: input["args"]?.json() ?? .object([:]))
        return PolicyTestCase(
            name: name, line: (item.node.mark?.line ?? 1), input: PolicyInput(
                agent: agent, user: input["user"]?.string() ?? "", actors: input["actors"]?.stringList() ?? [], run: run, target: target, args: { args },
                requestID: requestID, timeMs: timeMs, region: region),
            expect: expect, rule: fields["rule"]?.string())
    }
}

enum TargetKindName: String, CaseIterable {
    case model
    case tool
    case agent
}
