import Crypto

/// One policy rule from config: when its CEL condition holds for a call, its effect applies.
public struct PolicyRule: Sendable, Equatable {
    public enum Effect: String, Sendable, CaseIterable {
        case allow
        case deny
        case requireApproval = "require_approval"
    }

    public enum Mode: String, Sendable, CaseIterable {
        /// The effect applies.
        case enforce
        /// Evaluated and recorded, never applied: for trying a rule on live traffic.
        case shadow
    }

    /// What a condition that cannot be evaluated (a missing key, a type error) counts as.
    public enum OnError: String, Sendable, CaseIterable {
        /// As if the condition held for deny and require_approval rules, and not for allow
        /// rules: a broken rule never lets a call through.
        case failClosed = "fail_closed"
        /// As if the condition did not hold.
        case failOpen = "fail_open"
    }

    public var name: String
    public var condition: String
    public var effect: Effect
    /// Shown to the agent when the rule refuses or holds a call.
    public var reason: String
    public var mode: Mode
    /// `<kind>:<name>` patterns (`tool:erp.delete_*`, `model:*`) the rule is about; empty
    /// means every call. A rule is not evaluated for other calls.
    public var targets: [String]
    public var onError: OnError

    public init(
        name: String, condition: String, effect: Effect, reason: String = "", mode: Mode = .enforce, targets: [String] = [], onError: OnError = .failClosed
    ) {
        self.name = name
        self.condition = condition
        self.effect = effect
        self.reason = reason
        self.mode = mode
        self.targets = targets
        self.onError = onError
    }

    /// SHA-256 (hex, first 16 bytes) of what the rule says: an approval is bound to it, so
    /// editing the rule voids approvals given under the old text.
    public var version: String {
        let text = [name, condition, effect.rawValue, targets.joined(separator: ",")].joined(separator: "\u{0}")
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        for byte in SHA256.hash(data: Array(text.utf8)).prefix(16) {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: hex, as: UTF8.self)
    }

    /// Whether a `<kind>:<name>` target is one this rule is about.
    public func applies(kind: String, name: String) -> Bool {
        targets.isEmpty || targets.contains { PolicyRule.glob($0, matches: "\(kind):\(name)") }
    }

    /// `*` matches any run of characters (dots included); everything else is literal.
    public static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern.utf8), t = Array(text.utf8)
        var (pi, ti) = (0, 0)
        var star = -1
        var mark = 0
        while ti < t.count {
            if pi < p.count, p[pi] == UInt8(ascii: "*") {
                star = pi
                mark = ti
                pi += 1
            } else if pi < p.count, p[pi] == t[ti] {
                pi += 1
                ti += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ti = mark
            } else {
                return false
            }
        }
        while pi < p.count, p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}

/// What a policy condition sees about a call. Built by the pipeline for every target kind.
public struct PolicyInput: Sendable {
    public struct Agent: Sendable {
        public var id: String
        public var owner: String
        public var region: String
        public var description: String
        public var scopes: [String]

        public init(id: String, owner: String = "", region: String = "", description: String = "", scopes: [String] = []) {
            self.id = id
            self.owner = owner
            self.region = region
            self.description = description
            self.scopes = scopes
        }
    }

    public struct Run: Sendable {
        public var id: String
        public var parentID: String
        /// Calls made in the run before this one.
        public var step: Int
        public var calls: Int
        public var spentTokens: Int
        public var spentUSD: Double

        public init(id: String = "", parentID: String = "", step: Int = 0, calls: Int = 0, spentTokens: Int = 0, spentUSD: Double = 0) {
            self.id = id
            self.parentID = parentID
            self.step = step
            self.calls = calls
            self.spentTokens = spentTokens
            self.spentUSD = spentUSD
        }
    }

    public struct Target: Sendable {
        /// `model`, `tool` or `agent`.
        public var kind: String
        public var name: String
        public var namespace: String
        public var operation: String
        public var sideEffects: String
        public var risk: String
        public var idempotent: Bool
        public var owner: String

        public init(
            kind: String, name: String, namespace: String = "", operation: String = "", sideEffects: String = "", risk: String = "",
            idempotent: Bool = false, owner: String = ""
        ) {
            self.kind = kind
            self.name = name
            self.namespace = namespace
            self.operation = operation
            self.sideEffects = sideEffects
            self.risk = risk
            self.idempotent = idempotent
            self.owner = owner
        }
    }

    public var agent: Agent
    /// The user the agent acts for; empty when none.
    public var user: String
    /// The actor chain of a delegated token, the calling actor first.
    public var actors: [String]
    public var run: Run
    public var target: Target
    /// The call's arguments (a tool's arguments, a model request's body), built only when a
    /// rule reads `args`.
    public var args: @Sendable () -> CELValue
    public var requestID: String
    public var timeMs: Int64
    /// The region of the node deciding.
    public var region: String

    public init(
        agent: Agent, user: String = "", actors: [String] = [], run: Run = Run(), target: Target, args: @escaping @Sendable () -> CELValue = { .map(CELMap()) },
        requestID: String = "", timeMs: Int64, region: String = ""
    ) {
        self.agent = agent
        self.user = user
        self.actors = actors
        self.run = run
        self.target = target
        self.args = args
        self.requestID = requestID
        self.timeMs = timeMs
        self.region = region
    }
}

/// The outcome of the policy stage for one call.
public struct PolicyDecision: Sendable {
    public enum Effect: String, Sendable {
        case allow
        case deny
        case requireApproval = "require_approval"
    }

    public var effect: Effect
    /// The rule that decided (nil: no rule did; the grants alone allowed the call).
    public var rule: PolicyRule?
    public var reason: String
    /// Shadow rules whose condition held, with the effect they would have had.
    public var shadowMatches: [PolicyRule]
    /// Rules whose condition could not be evaluated, and why.
    public var errors: [(rule: String, message: String)]

    public static let allowed = PolicyDecision(effect: .allow, rule: nil, reason: "", shadowMatches: [], errors: [])
}

/// A rule set compiled and type-checked against the policy environment, evaluated per call.
///
/// Decision: grants come first (a call no grant allows never gets here). Then a matching
/// enforced `deny` rule refuses the call (deny wins); if enforced `allow` rules are about
/// this target, at least one must match, or the call is refused; then a matching
/// `require_approval` rule holds the call for a human. Otherwise the call is allowed.
public final class PolicyEngine: Sendable {
    struct Compiled: Sendable {
        let rule: PolicyRule
        let program: CELProgram
        /// Which input variables the condition reads (others are not built).
        let reads: Set<String>
    }

    public struct CompileError: Error, Sendable, CustomStringConvertible {
        public var rule: String
        /// Problems in the condition, with line and column inside it.
        public var errors: [CELSourceError]
        public var description: String { "policy '\(rule)': " + errors.map(\.description).joined(separator: "; ") }
    }

    public let rules: [PolicyRule]
    private let compiled: [Compiled]
    public var isEmpty: Bool { compiled.isEmpty }

    /// The variables and types every condition is checked against.
    public static let environment: CELEnvironment = {
        let agent = CELMessageType(name: "interlock.Agent", fields: [
            "id": .init(.string), "owner": .init(.string), "region": .init(.string), "description": .init(.string), "scopes": .init(.list(.string)),
        ])
        let run = CELMessageType(name: "interlock.Run", fields: [
            "id": .init(.string), "parent_id": .init(.string), "step": .init(.int), "calls": .init(.int), "spent_tokens": .init(.int),
            "spent_usd": .init(.double),
        ])
        let target = CELMessageType(name: "interlock.Target", fields: [
            "kind": .init(.string), "name": .init(.string), "namespace": .init(.string), "operation": .init(.string), "side_effects": .init(.string),
            "risk": .init(.string), "idempotent": .init(.bool), "owner": .init(.string),
        ])
        let user = CELMessageType(name: "interlock.User", fields: ["id": .init(.string)])
        let request = CELMessageType(name: "interlock.Request", fields: [
            "id": .init(.string), "time": .init(.timestamp), "region": .init(.string),
        ])
        return CELEnvironment(
            variables: [
                "agent": .message(agent.name), "user": .message(user.name), "actors": .list(.string), "run": .message(run.name),
                "target": .message(target.name), "args": .dyn, "request": .message(request.name),
            ],
            messageTypes: [agent.name: agent, run.name: run, target.name: target, user.name: user, request.name: request],
            costLimit: 100_000)
    }()

    /// Compiles every rule; throws with the problems of every rule that does not check.
    public init(rules: [PolicyRule], costLimit: Int = 100_000) throws(PolicyCompileErrors) {
        var environment = Self.environment
        environment.costLimit = costLimit
        var compiled: [Compiled] = []
        var failures: [CompileError] = []
        for rule in rules {
            do throws(CompileError) {
                compiled.append(try Self.compile(rule, environment: environment))
            } catch {
                failures.append(error)
            }
        }
        guard failures.isEmpty else { throw PolicyCompileErrors(failures: failures) }
        self.rules = rules
        self.compiled = compiled
    }

    /// Parses and type-checks one rule's condition (which must be a bool).
    public static func check(_ rule: PolicyRule) -> [CELSourceError] {
        do {
            _ = try compile(rule, environment: environment)
            return []
        } catch {
            return error.errors
        }
    }

    static func compile(_ rule: PolicyRule, environment: CELEnvironment) throws(CompileError) -> Compiled {
        let node: CELNode
        do {
            node = try CELParser.parse(rule.condition)
        } catch {
            throw CompileError(rule: rule.name, errors: [error])
        }
        var checker = CELChecker(environment: environment)
        let type: CELType
        do {
            type = try checker.check(node, source: rule.condition)
        } catch {
            throw CompileError(rule: rule.name, errors: error.errors)
        }
        guard type == .bool || type == .dyn else {
            throw CompileError(rule: rule.name, errors: [CELSourceError("the condition is a \(type), not a bool", offset: 0, in: Array(rule.condition.unicodeScalars))])
        }
        let program: CELProgram
        do {
            program = try CELProgram(node, source: rule.condition, environment: environment)
        } catch {
            throw CompileError(rule: rule.name, errors: [error])
        }
        return Compiled(rule: rule, program: program, reads: Self.roots(node))
    }

    /// The top-level names an expression reads.
    static func roots(_ node: CELNode) -> Set<String> {
        switch node.kind {
        case .literal: return []
        case .ident(let name): return [String(name.split(separator: ".").first ?? "")]
        case .select(let operand, _, _): return roots(operand)
        case .call(let target, _, let args): return args.reduce(target.map(roots) ?? []) { $0.union(roots($1)) }
        case .list(let items): return items.reduce([]) { $0.union(roots($1)) }
        case .map(let entries): return entries.reduce([]) { $0.union(roots($1.key)).union(roots($1.value)) }
        case .message(_, let fields): return fields.reduce([]) { $0.union(roots($1.value)) }
        case .comprehension(let loop):
            let inner = roots(loop.range).union(roots(loop.accuInit)).union(roots(loop.condition)).union(roots(loop.step)).union(roots(loop.result))
            return inner.subtracting([loop.accuVar, loop.iterVar, loop.iterVar2 ?? ""])
        }
    }

    /// Evaluates the rules about this call.
    public func decide(_ input: PolicyInput) -> PolicyDecision {
        guard !compiled.isEmpty else { return .allowed }
        var slots: [CELValue?]?
        var deny: PolicyRule?
        var approval: PolicyRule?
        var allowRules = 0
        var allowed = false
        var shadow: [PolicyRule] = []
        var errors: [(String, String)] = []
        for entry in compiled where entry.rule.applies(kind: input.target.kind, name: input.target.name) {
            let rule = entry.rule
            if rule.mode == .enforce, rule.effect == .allow { allowRules += 1 }
            // Later rules cannot change a deny; shadow rules still run for the record.
            if deny != nil, rule.mode == .enforce { continue }
            if slots == nil { slots = Array(repeating: nil, count: entry.program.variableNames.count) }
            fill(&slots!, for: entry, from: input)
            let holds: Bool
            do {
                holds = try entry.program.evaluate(slots: slots!).boolValue == true
            } catch {
                errors.append((rule.name, error.message))
                holds = rule.onError == .failClosed ? rule.effect != .allow : false
            }
            guard holds else { continue }
            if rule.mode == .shadow {
                shadow.append(rule)
                continue
            }
            switch rule.effect {
            case .deny: deny = rule
            case .allow: allowed = true
            case .requireApproval: if approval == nil { approval = rule }
            }
        }
        if let deny {
            return PolicyDecision(effect: .deny, rule: deny, reason: deny.reason, shadowMatches: shadow, errors: errors)
        }
        if allowRules > 0, !allowed {
            return PolicyDecision(
                effect: .deny, rule: nil, reason: "No allow rule about \(input.target.kind) '\(input.target.name)' matches this call.", shadowMatches: shadow,
                errors: errors)
        }
        if let approval {
            return PolicyDecision(effect: .requireApproval, rule: approval, reason: approval.reason, shadowMatches: shadow, errors: errors)
        }
        return PolicyDecision(effect: .allow, rule: nil, reason: "", shadowMatches: shadow, errors: errors)
    }

    /// Builds the variables a rule reads that are not built yet.
    private func fill(_ slots: inout [CELValue?], for entry: Compiled, from input: PolicyInput) {
        let program = entry.program
        for name in entry.reads {
            guard let slot = program.slot(of: name), slots[slot] == nil else { continue }
            switch name {
            case "agent":
                slots[slot] = .message(CELMessage(typeName: "interlock.Agent", fields: [
                    "id": .string(input.agent.id), "owner": .string(input.agent.owner), "region": .string(input.agent.region),
                    "description": .string(input.agent.description), "scopes": .list(input.agent.scopes.map(CELValue.string)),
                ]))
            case "user":
                slots[slot] = .message(CELMessage(typeName: "interlock.User", fields: ["id": .string(input.user)]))
            case "actors":
                slots[slot] = .list(input.actors.map(CELValue.string))
            case "run":
                slots[slot] = .message(CELMessage(typeName: "interlock.Run", fields: [
                    "id": .string(input.run.id), "parent_id": .string(input.run.parentID), "step": .int(Int64(input.run.step)),
                    "calls": .int(Int64(input.run.calls)), "spent_tokens": .int(Int64(input.run.spentTokens)), "spent_usd": .double(input.run.spentUSD),
                ]))
            case "target":
                let target = input.target
                slots[slot] = .message(CELMessage(typeName: "interlock.Target", fields: [
                    "kind": .string(target.kind), "name": .string(target.name), "namespace": .string(target.namespace),
                    "operation": .string(target.operation), "side_effects": .string(target.sideEffects), "risk": .string(target.risk),
                    "idempotent": .bool(target.idempotent), "owner": .string(target.owner),
                ]))
            case "args":
                slots[slot] = input.args()
            case "request":
                let seconds = CELTime.floorDiv(input.timeMs, 1000)
                slots[slot] = .message(CELMessage(typeName: "interlock.Request", fields: [
                    "id": .string(input.requestID), "region": .string(input.region),
                    "time": .timestamp(CELTimestamp(seconds: seconds, nanos: Int32((input.timeMs - seconds * 1000) * 1_000_000))),
                ]))
            default:
                break
            }
        }
    }
}

/// Every rule that failed to compile.
public struct PolicyCompileErrors: Error, Sendable, CustomStringConvertible {
    public var failures: [PolicyEngine.CompileError]
    public var description: String { failures.map(\.description).joined(separator: "\n") }
}
