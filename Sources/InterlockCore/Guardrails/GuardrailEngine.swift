import InterlockPolicy

/// `guardrails` in config: which detectors run on which calls, and what a hit does.
public struct GuardrailSettings: Sendable {
    public enum Direction: String, Sendable, CaseIterable {
        /// What an agent sends (prompts, tool arguments).
        case `in`
        /// What comes back (model answers, tool results, retrieved content).
        case out
        case both
    }

    public enum Action: String, Sendable, CaseIterable, Comparable {
        /// Recorded only.
        case flag
        /// The upstream (in) or the agent (out) sees the text with the span replaced.
        case redact
        /// The call waits for a human (what an agent sends only).
        case requireApproval = "require_approval"
        /// The call is refused (in) or its answer withheld (out).
        case block

        var rank: Int {
            switch self {
            case .flag: 0
            case .redact: 1
            case .requireApproval: 2
            case .block: 3
            }
        }

        public static func < (lhs: Action, rhs: Action) -> Bool { lhs.rank < rhs.rank }
    }

    public struct Rule: Sendable {
        /// Families (`secrets`, `pii`, `exfiltration`, `injection`, `custom`) or single
        /// detectors (`pii.card`, `custom.codename`).
        public var detectors: [String]
        public var direction: Direction
        public var action: Action
        /// `<kind>:<name>` patterns with `*`; empty: every call.
        public var targets: [String]
        /// Agent ids; empty: every agent.
        public var agents: [String]

        public init(detectors: [String], direction: Direction = .both, action: Action, targets: [String] = [], agents: [String] = []) {
            self.detectors = detectors
            self.direction = direction
            self.action = action
            self.targets = targets
            self.agents = agents
        }
    }

    public var rules: [Rule] = []
    /// Domains e-mail may be sent to (subdomains included); empty: recipients are not checked.
    public var allowedDomains: [String] = []
    /// Hosts URLs may point at (subdomains included); empty: URLs are not checked (markdown
    /// images carrying data are always).
    public var allowedHosts: [String] = []
    /// Custom patterns (RE2 syntax), by name.
    public var custom: [(name: String, pattern: String)] = []
    /// How much of a streamed answer is held back so a secret split across chunks is caught
    /// before any of it is sent, in bytes.
    public var streamWindowBytes: Int = 256

    public init() {}

    public static let families = ["secrets", "pii", "exfiltration", "injection", "custom"]
}

/// One hit, where it was (the JSON path of the string, and the UTF-8 byte span inside it)
/// and what is done about it.
public struct GuardrailHit: Sendable, Equatable {
    public var detector: String
    public var path: String
    public var range: Range<Int>
    public var action: GuardrailSettings.Action

    /// For the audit log: detector, where, and what was done; never the text.
    public var summary: String { "\(detector)@\(path.isEmpty ? "" : path + ":")\(range.lowerBound)-\(range.upperBound)" }
}

/// The guardrails that apply to one call in one direction.
public struct GuardrailPlan: Sendable {
    public let options: GuardrailScanOptions
    let actions: [(detector: String, action: GuardrailSettings.Action)]
    public let direction: GuardrailSettings.Direction
    /// The strongest action any hit can have (decides whether a stream must hold text back).
    public let strongest: GuardrailSettings.Action

    /// The action for a detector's hit: the strongest of the rules naming it or its family.
    public func action(for detector: String) -> GuardrailSettings.Action? {
        var best: GuardrailSettings.Action?
        for (name, action) in actions where name == detector || detector.hasPrefix(name + ".") {
            if best == nil || action > best! { best = action }
        }
        return best
    }

    /// The hits in one string (empty when none).
    public func scan(_ text: String, path: String, field: String?) -> [GuardrailHit] {
        var options = self.options
        options.field = field
        return GuardrailDetectors.scan(text, options).compactMap { finding in
            action(for: finding.detector).map { GuardrailHit(detector: finding.detector, path: path, range: finding.range, action: $0) }
        }
    }

    /// Scans every string of `json` (or, with `only`, those under one of these keys) and
    /// returns the value with redactions applied, and the hits.
    public func apply(to json: JSONValue, only keys: Set<String>? = nil) -> (JSONValue, [GuardrailHit]) {
        var hits: [GuardrailHit] = []
        let result = walk(json, path: "", field: nil, inScope: keys == nil, keys: keys, hits: &hits)
        return (result, hits)
    }

    private func walk(_ value: JSONValue, path: String, field: String?, inScope: Bool, keys: Set<String>?, hits: inout [GuardrailHit]) -> JSONValue {
        switch value {
        case .string(let text):
            guard inScope else { return value }
            let found = scan(text, path: path, field: field)
            guard !found.isEmpty else { return value }
            hits += found
            let redactions = found.filter { $0.action == .redact }.map(\.range)
            return redactions.isEmpty ? value : .string(Self.redact(text, redactions, label: found))
        case .array(let items):
            return .array(items.enumerated().map { walk($1, path: "\(path)[\($0)]", field: field, inScope: inScope, keys: keys, hits: &hits) })
        case .object(let object):
            var result = JSONObject()
            for (key, member) in object {
                let scoped = inScope || (keys?.contains(key) ?? false)
                result[key] = walk(member, path: path.isEmpty ? key : "\(path).\(key)", field: key, inScope: scoped, keys: keys, hits: &hits)
            }
            return .object(result)
        default:
            return value
        }
    }

    /// `text` with each range (UTF-8 bytes) replaced by `[REDACTED:<detector>]`; overlapping
    /// ranges are joined.
    public static func redact(_ text: String, _ ranges: [Range<Int>], label hits: [GuardrailHit]) -> String {
        let bytes = Array(text.utf8)
        var merged: [Range<Int>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, range.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        var output: [UInt8] = []
        var cursor = 0
        for range in merged {
            output += bytes[cursor..<range.lowerBound]
            let detector = hits.first { $0.range.overlaps(range) && $0.action == .redact }?.detector ?? "guardrail"
            output += Array("[REDACTED:\(detector)]".utf8)
            cursor = range.upperBound
        }
        output += bytes[cursor...]
        return String(decoding: output, as: UTF8.self)
    }
}

/// The configured guardrails, compiled once: which plan applies to a call.
public final class GuardrailEngine: Sendable {
    public let settings: GuardrailSettings
    private let custom: [(name: String, regex: CELRegex)]

    public struct InvalidPattern: Error, Sendable {
        public var name: String
        public var message: String
    }

    public init(settings: GuardrailSettings) throws(InvalidPattern) {
        self.settings = settings
        var compiled: [(String, CELRegex)] = []
        for (name, pattern) in settings.custom {
            do throws(CELRegex.SyntaxError) {
                compiled.append((name, try CELRegex(pattern)))
            } catch {
                throw InvalidPattern(name: name, message: error.message)
            }
        }
        custom = compiled
    }

    public var isEmpty: Bool { settings.rules.isEmpty }

    /// The guardrails for a call of `agent` to `<kind>:<name>` in one direction; nil if none.
    public func plan(agent: String, kind: String, name: String, direction: GuardrailSettings.Direction) -> GuardrailPlan? {
        guard !settings.rules.isEmpty else { return nil }
        var actions: [(String, GuardrailSettings.Action)] = []
        for rule in settings.rules where rule.direction == .both || rule.direction == direction {
            guard rule.agents.isEmpty || rule.agents.contains(agent) else { continue }
            guard rule.targets.isEmpty || rule.targets.contains(where: { PolicyRule.glob($0, matches: "\(kind):\(name)") }) else { continue }
            for detector in rule.detectors { actions.append((detector, rule.action)) }
        }
        guard !actions.isEmpty else { return nil }
        var options = GuardrailScanOptions()
        options.allowedDomains = settings.allowedDomains
        options.allowedHosts = settings.allowedHosts
        for (detector, _) in actions {
            let family = String(detector.prefix { $0 != "." })
            switch family {
            case "secrets": options.secrets = true
            case "pii": options.pii = true
            case "exfiltration": options.exfiltration = true
            case "injection": options.injection = true
            default:
                let name = detector.hasPrefix("custom.") ? String(detector.dropFirst(7)) : nil
                for pattern in custom where name == nil || pattern.name == name {
                    if !options.custom.contains(where: { $0.name == pattern.name }) { options.custom.append(pattern) }
                }
            }
        }
        let strongest = actions.map(\.1).max() ?? .flag
        return GuardrailPlan(options: options, actions: actions, direction: direction, strongest: strongest)
    }
}
