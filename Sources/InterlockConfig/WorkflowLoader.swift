import FoundationEssentials
public import InterlockCore
import InterlockPolicy
import Yams

/// What a workflow may refer to outside itself; names not in a set are errors (nil sets are
/// not checked).
public struct WorkflowReferences: Sendable {
    public var agents: Set<String>?
    public var models: Set<String>?

    public init(agents: Set<String>? = nil, models: Set<String>? = nil) {
        self.agents = agents
        self.models = models
    }

    public init(_ config: InterlockConfiguration) {
        self.init(agents: Set(config.agents.map(\.agent.id)), models: Set(config.models.map(\.name)))
    }
}

/// Loads and validates workflow definitions (YAML, one workflow per file or API body).
///
/// Every problem is reported at once with file, line and column, expressions inside
/// `{{ }}` and conditions included. Workflow text is taken as written: `${VAR}` is not
/// interpolated (a posted workflow must not be able to read the server's environment).
public enum WorkflowLoader {
    public static func load(path: String, references: WorkflowReferences = .init()) throws(ConfigError) -> WorkflowDefinition {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, path: "", message: "cannot read the workflow file")])
        }
        return try parse(String(decoding: data, as: UTF8.self), file: path, references: references)
    }

    public static func parse(_ text: String, file: String, references: WorkflowReferences = .init()) throws(ConfigError) -> WorkflowDefinition {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigError(diagnostics: [ConfigLoader.diagnostic(yamlError: error, file: file)])
        }
        guard let root else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: file, line: 1, column: 1, path: "", message: "the workflow is empty")])
        }
        let reader = ConfigReader(file: file, environment: [:])
        reader.interpolates = false
        reader.text = text.split(separator: "\n", omittingEmptySubsequences: false)
        var document = WorkflowDocument(references: references)
        let definition = document.read(ConfigNode(node: root, path: "", reader: reader))
        guard reader.diagnostics.isEmpty, var definition else {
            throw ConfigError(diagnostics: reader.diagnostics.sorted { ($0.line, $0.column) < ($1.line, $1.column) })
        }
        definition.source = text
        definition.hash = AuditRecord.sha256Hex(Array(text.utf8))
        return definition
    }

    /// Names that may not be step ids: the variables templates bind, and `end`.
    static let reservedIDs: Set<String> = ["input", "item", "index", "event", "end", "error", "run", "true", "false", "null", "in"]
}

/// The schema of a workflow file.
private struct WorkflowDocument {
    let references: WorkflowReferences
    /// Every step id seen, for uniqueness across the workflow.
    var ids: Set<String> = []

    init(references: WorkflowReferences) {
        self.references = references
    }

    mutating func read(_ root: ConfigNode) -> WorkflowDefinition? {
        guard let top = root.mapping(allowed: ["workflow", "description", "agent", "input", "output", "budgets", "on", "priority", "steps"]) else { return nil }
        let name = top["workflow"]?.nonEmptyString()
        if top["workflow"] == nil { root.report("missing required key 'workflow' (the workflow's name)") }
        if let name, let nameNode = top["workflow"], !Self.isName(name) {
            nameNode.report("a workflow name is 1 to 64 letters, digits, '_', '-' or '.', found '\(name)'")
        }
        let agent = top["agent"]?.nonEmptyString()
        if top["agent"] == nil { root.report("missing required key 'agent' (the registered agent whose identity and grants the steps use)") }
        if let agent, let agentNode = top["agent"] { checkAgent(agent, agentNode) }
        let inputSchema = top["input"].flatMap(schema)
        var budgets = RunBudgetLimits()
        if let node = top["budgets"] { readBudgets(node, into: &budgets) }
        let priority = top["priority"]?.int(minimum: -1_000, maximum: 1_000) ?? 0
        guard let stepsNode = top["steps"] else {
            root.report("missing required key 'steps' (the list of steps)")
            return nil
        }
        let steps = readSequence(stepsNode, name: "", visible: ["input"], inMap: false) ?? []
        var definition = WorkflowDefinition(
            name: name ?? "", description: top["description"]?.string() ?? "", agentID: agent ?? "", inputSchema: inputSchema, budgets: budgets,
            priority: priority, steps: steps)
        if let node = top["output"], let fields = node.mapping(allowed: ["value", "reads", "schema"]) {
            let reads = fields["reads"].map { readReads($0, visible: Set(ids).union(["input"])) } ?? []
            definition.outputReads = reads
            if let value = fields["value"] { definition.output = template(value, variables: reads) }
            definition.outputSchema = fields["schema"].flatMap(schema)
        }
        if let node = top["on"] {
            let items: [ConfigNode]
            if case .sequence = node.node { items = node.sequence() ?? [] } else { items = [node] }
            definition.triggers = items.compactMap(readTrigger)
        }
        return definition
    }

    static func isName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == ".") }
    }

    static func isIdentifier(_ id: String) -> Bool {
        guard let first = id.first, first.isASCII, first.isLetter || first == "_" else { return false }
        return id.utf8.count <= 64 && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }
    }

    func checkAgent(_ agent: String, _ node: ConfigNode) {
        guard let agents = references.agents, !agents.contains(agent) else { return }
        var message = "there is no agent '\(agent)' in the configuration"
        if let suggestion = Suggestion.closest(to: agent, in: Array(agents)) { message += "; did you mean '\(suggestion)'?" }
        node.report(message)
    }

    func schema(_ node: ConfigNode) -> JSONSchema? {
        do {
            return try JSONSchema(node.json())
        } catch {
            node.report("not a usable JSON schema: \(error)")
            return nil
        }
    }

    func readBudgets(_ node: ConfigNode, into budgets: inout RunBudgetLimits) {
        guard let fields = node.mapping(allowed: ["max_steps", "max_model_calls", "max_tool_calls", "max_tokens", "max_usd", "max_wall_time_ms"]) else { return }
        budgets.maxSteps = fields["max_steps"]?.int(minimum: 1)
        budgets.maxModelCalls = fields["max_model_calls"]?.int(minimum: 0)
        budgets.maxToolCalls = fields["max_tool_calls"]?.int(minimum: 0)
        budgets.maxTokens = fields["max_tokens"]?.int(minimum: 0)
        budgets.maxCost = fields["max_usd"]?.double(minimum: 0).map { USD(dollars: $0) }
        budgets.maxWallTimeMs = fields["max_wall_time_ms"]?.int(minimum: 1).map(Int64.init)
    }

    func readTrigger(_ node: ConfigNode) -> WorkflowTrigger? {
        guard let fields = node.mapping(allowed: ["event", "if", "input"]) else { return nil }
        guard let typeNode = fields["event"] else {
            node.report("missing required key 'event' (the event type that starts a run)")
            return nil
        }
        guard let type = typeNode.nonEmptyString() else { return nil }
        var trigger = WorkflowTrigger(eventType: type)
        if let condition = fields["if"] { trigger.condition = program(condition, variables: ["event"]) }
        if let input = fields["input"] { trigger.input = template(input, variables: ["event"]) }
        return trigger
    }

    /// A list of steps. `visible` holds the ids a step of this list may read before its own
    /// earlier siblings are added.
    mutating func readSequence(_ node: ConfigNode, name: String, visible: Set<String>, inMap: Bool) -> [WorkflowStep]? {
        guard let items = node.sequence() else { return nil }
        if items.isEmpty { node.report("a list of steps must not be empty") }
        var visible = visible
        var steps: [(WorkflowStep, ConfigNode)] = []
        for item in items {
            guard let step = readStep(item, visible: visible, inMap: inMap) else { continue }
            visible.insert(step.id)
            steps.append((step, item))
        }
        // Targets are checked once the whole list is known: a step may jump forward.
        let local = Set(steps.map(\.0.id))
        for (step, item) in steps {
            let fields = item.mapping(allowed: []) ?? [:]
            if let next = step.next { checkTarget(next, in: local, node: fields["next"] ?? item, key: "next") }
            if let onError = step.onError { checkTarget(onError, in: local, node: fields["on_error"] ?? item, key: "on_error") }
            if case .branch(let cases, let otherwise) = step.kind {
                let caseNodes = fields["cases"]?.sequence() ?? []
                for (index, branchCase) in cases.enumerated() {
                    let node = index < caseNodes.count ? (caseNodes[index].mapping(allowed: [])?["next"] ?? caseNodes[index]) : item
                    checkTarget(branchCase.next, in: local, node: node, key: "next")
                }
                if let otherwise { checkTarget(otherwise, in: local, node: fields["default"] ?? item, key: "default") }
            }
        }
        return steps.map(\.0)
    }

    func checkTarget(_ target: String, in local: Set<String>, node: ConfigNode, key: String) {
        guard target != "end", !local.contains(target) else { return }
        var message = "'\(key)' names '\(target)', which is not a step of this list (steps jump only within their own list; 'end' ends it)"
        if let suggestion = Suggestion.closest(to: target, in: Array(local)) { message += "; did you mean '\(suggestion)'?" }
        node.report(message)
    }

    func readReads(_ node: ConfigNode, visible: Set<String>) -> [String] {
        guard let reads = node.stringList() else { return [] }
        for read in reads where !visible.contains(read) {
            var message = "'\(read)' is not 'input' or a step declared before this one (in its list or an enclosing one)"
            if let suggestion = Suggestion.closest(to: read, in: Array(visible)) { message += "; did you mean '\(suggestion)'?" }
            node.report(message)
        }
        return reads
    }

    static let commonKeys = ["id", "kind", "reads", "next", "on_error", "retry", "timeout_ms", "agent", "description"]
    static let kindKeys: [String: [String]] = [
        "agent": ["instructions", "prompt", "model", "tools", "output_schema", "max_iterations", "max_output_retries", "max_output_tokens"],
        "tool": ["tool", "arguments"],
        "approval": ["message"],
        "input": ["message", "schema"],
        "branch": ["cases", "default"],
        "parallel": ["branches", "max_concurrency"],
        "map": ["items", "steps", "max_concurrency"],
        "emit": ["event", "payload", "dedup_key"],
        "wait_event": ["event", "if", "after"],
        "sleep": ["duration_ms"],
    ]

    mutating func readStep(_ node: ConfigNode, visible: Set<String>, inMap: Bool) -> WorkflowStep? {
        // The kind decides which keys are allowed; read it first.
        guard case .mapping(let mapping) = node.node else {
            node.report("expected a step (a mapping with 'id' and 'kind'), found \(node.kindName)")
            return nil
        }
        let kindNames = Self.kindKeys.keys.sorted()
        var kind: String?
        if let kindValue = mapping["kind"] {
            let kindNode = ConfigNode(node: kindValue, path: node.child("kind"), reader: node.reader)
            if let text = kindNode.string() {
                if Self.kindKeys[text] != nil {
                    kind = text
                } else {
                    var message = "'\(text)' is not a step kind (expected one of: \(kindNames.joined(separator: ", ")))"
                    if let suggestion = Suggestion.closest(to: text, in: kindNames) { message += "; did you mean '\(suggestion)'?" }
                    kindNode.report(message)
                    return nil
                }
            }
        } else {
            node.report("missing required key 'kind' (one of: \(kindNames.joined(separator: ", ")))")
            return nil
        }
        guard let kind, let fields = node.mapping(allowed: Self.commonKeys + (Self.kindKeys[kind] ?? [])) else { return nil }
        guard let idNode = fields["id"], let id = idNode.nonEmptyString() else {
            if fields["id"] == nil { node.report("missing required key 'id'") }
            return nil
        }
        if !Self.isIdentifier(id) {
            idNode.report("a step id is a letter or '_' then letters, digits or '_' (at most 64), found '\(id)'")
        } else if WorkflowLoader.reservedIDs.contains(id) {
            idNode.report("'\(id)' is reserved; choose another step id")
        }
        if !ids.insert(id).inserted { idNode.report("duplicate step id '\(id)' (ids are unique across the workflow)") }
        let reads = fields["reads"].map { readReads($0, visible: visible) } ?? []
        var variables = reads
        if inMap { variables += ["item", "index"] }
        func required(_ key: String, _ what: String) -> ConfigNode? {
            if let value = fields[key] { return value }
            let article = kind.first.map { "aeiou".contains($0) } == true ? "an" : "a"
            node.report("\(article) \(kind) step needs '\(key)' (\(what))")
            return nil
        }
        let stepKind: WorkflowStep.Kind
        switch kind {
        case "agent":
            let instructions = required("instructions", "the agent's system prompt").flatMap { template($0, variables: variables) }
            let model = required("model", "a model alias").flatMap { $0.nonEmptyString() }
            if let model, let models = references.models, !models.contains(model), let modelNode = fields["model"] {
                var message = "there is no model alias '\(model)' in the configuration"
                if let suggestion = Suggestion.closest(to: model, in: Array(models)) { message += "; did you mean '\(suggestion)'?" }
                modelNode.report(message)
            }
            var agent = AgentStep(instructions: instructions ?? .literal(.string("")), model: model ?? "")
            agent.prompt = fields["prompt"].flatMap { template($0, variables: variables) }
            agent.tools = fields["tools"]?.stringList() ?? []
            agent.outputSchema = fields["output_schema"].flatMap(schema)
            if let value = fields["max_iterations"]?.int(minimum: 1, maximum: 1_000) { agent.maxIterations = value }
            if let value = fields["max_output_retries"]?.int(minimum: 0, maximum: 100) { agent.maxOutputRetries = value }
            agent.maxOutputTokens = fields["max_output_tokens"]?.int(minimum: 1, maximum: 1_000_000)
            stepKind = .agent(agent)
        case "tool":
            let tool = required("tool", "the tool's name, namespace.name").flatMap { $0.nonEmptyString() } ?? ""
            let arguments = fields["arguments"].flatMap { template($0, variables: variables) } ?? .literal(.object([:]))
            stepKind = .tool(name: tool, arguments: arguments)
        case "approval":
            let message = required("message", "what the approver is asked").flatMap { template($0, variables: variables) }
            stepKind = .approval(message: message ?? .literal(.string("")))
        case "input":
            let message = required("message", "what the person is asked").flatMap { template($0, variables: variables) }
            stepKind = .input(message: message ?? .literal(.string("")), schema: fields["schema"].flatMap(schema))
        case "branch":
            var cases: [WorkflowStep.BranchCase] = []
            if let items = required("cases", "a list of {if, next}")?.sequence() {
                for item in items {
                    guard let caseFields = item.mapping(allowed: ["if", "next"]) else { continue }
                    guard let conditionNode = caseFields["if"], let nextNode = caseFields["next"] else {
                        item.report("a branch case needs 'if' (a CEL condition) and 'next' (a step id or 'end')")
                        continue
                    }
                    guard let condition = program(conditionNode, variables: variables, bool: true), let next = nextNode.nonEmptyString() else { continue }
                    cases.append(.init(condition: condition, next: next))
                }
            }
            let otherwise = fields["default"]?.nonEmptyString()
            // Nothing a branch reads changes until another step runs: a jump to itself would spin.
            for target in cases.map(\.next) + [otherwise].compactMap({ $0 }) where target == id {
                node.report("branch '\(id)' jumps to itself; a loop must go through another step")
            }
            stepKind = .branch(cases: cases, otherwise: otherwise)
        case "parallel":
            var branches: [WorkflowSequence] = []
            if let entries = required("branches", "a mapping of branch names to lists of steps")?.namedEntries() {
                for (branchName, branchNode) in entries {
                    if !Self.isIdentifier(branchName) { branchNode.report("a branch name is a letter or '_' then letters, digits or '_', found '\(branchName)'") }
                    let steps = readSequence(branchNode, name: branchName, visible: visible, inMap: inMap) ?? []
                    branches.append(WorkflowSequence(name: branchName, steps: steps))
                }
                if entries.isEmpty { fields["branches"]?.report("a parallel step needs at least one branch") }
            }
            let limit = fields["max_concurrency"]?.int(minimum: 1, maximum: 10_000) ?? max(1, branches.count)
            stepKind = .parallel(branches: branches, maxConcurrency: limit)
        case "map":
            let items = required("items", "a CEL list in {{ }}, e.g. '{{ intake.lines }}'").flatMap { template($0, variables: variables) }
            let body = required("steps", "the steps run for each item").flatMap { readSequence($0, name: id, visible: visible, inMap: true) } ?? []
            let limit = fields["max_concurrency"]?.int(minimum: 1, maximum: 10_000) ?? 4
            stepKind = .map(items: items ?? .literal(.array([])), body: WorkflowSequence(name: id, steps: body), maxConcurrency: limit)
        case "emit":
            let type = required("event", "the event type to publish").flatMap { $0.nonEmptyString() } ?? ""
            let payload = fields["payload"].flatMap { template($0, variables: variables) } ?? .literal(.object([:]))
            let dedup = fields["dedup_key"].flatMap { template($0, variables: variables) }
            stepKind = .emit(type: type, payload: payload, dedupKey: dedup)
        case "wait_event":
            let type = required("event", "the event type to wait for").flatMap { $0.nonEmptyString() } ?? ""
            let condition = fields["if"].flatMap { program($0, variables: variables + ["event"], bool: true) }
            var after: String?
            if let afterNode = fields["after"], let name = afterNode.nonEmptyString() {
                if reads.contains(name) { after = name } else { afterNode.report("'after' must name one of the step's reads (an emit step), found '\(name)'") }
            }
            stepKind = .waitEvent(type: type, condition: condition, after: after)
        default:
            let duration = required("duration_ms", "how long to sleep, in milliseconds")?.int(minimum: 0, maximum: 366 * 86_400_000) ?? 0
            stepKind = .sleep(durationMs: Int64(duration))
        }
        var step = WorkflowStep(id: id, kind: stepKind, reads: reads)
        step.next = fields["next"]?.nonEmptyString()
        step.onError = fields["on_error"]?.nonEmptyString()
        step.timeoutMs = fields["timeout_ms"]?.int(minimum: 1).map(Int64.init)
        if let agentNode = fields["agent"], let agent = agentNode.nonEmptyString() {
            checkAgent(agent, agentNode)
            step.agentID = agent
        }
        if let retryNode = fields["retry"] { step.retry = readRetry(retryNode) }
        if case .branch = stepKind, step.next != nil { fields["next"]?.report("a branch step chooses its next step with 'cases' and 'default', not 'next'") }
        return step
    }

    func readRetry(_ node: ConfigNode) -> StepRetry {
        var retry = StepRetry(maxAttempts: 3)
        guard let fields = node.mapping(allowed: ["max_attempts", "initial_backoff_ms", "max_backoff_ms", "retry_on"]) else { return retry }
        if let value = fields["max_attempts"]?.int(minimum: 1, maximum: 100) { retry.maxAttempts = value }
        if let value = fields["initial_backoff_ms"]?.int(minimum: 0, maximum: 86_400_000) { retry.initialBackoffMs = value }
        if let value = fields["max_backoff_ms"]?.int(minimum: 0, maximum: 86_400_000) { retry.maxBackoffMs = value }
        if retry.maxBackoffMs < retry.initialBackoffMs { fields["max_backoff_ms"]?.report("must be at least initial_backoff_ms (\(retry.initialBackoffMs))") }
        if let codes = fields["retry_on"]?.stringList() { retry.retryOn = Set(codes) }
        return retry
    }

    func environment(_ variables: [String]) -> CELEnvironment {
        CELEnvironment(variables: Dictionary(variables.map { ($0, CELType.dyn) }, uniquingKeysWith: { first, _ in first }), costLimit: 100_000)
    }

    /// A CEL condition (a plain scalar, no `{{ }}`).
    func program(_ node: ConfigNode, variables: [String], bool: Bool = false) -> CELProgram? {
        guard let source = node.nonEmptyString() else { return nil }
        do {
            return try CELProgram.checked(source, environment: environment(variables), resultTypes: bool ? [.bool] : nil)
        } catch {
            for sourceError in error.errors { node.report(celError: sourceError) }
            return nil
        }
    }

    /// A JSON value whose strings may hold `{{ expressions }}`.
    func template(_ node: ConfigNode, variables: [String]) -> WorkflowTemplate? {
        switch node.node {
        case .scalar(let scalar):
            guard scalar.style != .plain || scalar.string.contains("{{") else { return .literal(node.json()) }
            do {
                return try WorkflowTemplate.compile(string: scalar.string, environment: environment(variables))
            } catch {
                // Where the expression starts inside the string, for the error's line and column.
                let before = scalar.string.prefix(error.offset)
                let lineOffset = before.count(where: { $0 == "\n" })
                let columnOffset = before.count - (before.lastIndex(of: "\n").map { before.distance(from: before.startIndex, to: $0) + 1 } ?? 0)
                if let message = error.message {
                    var located = CELSourceError.at(line: 1 + lineOffset, column: 1 + columnOffset, message: message)
                    if lineOffset > 0 { located.column = columnOffset + 1 }
                    node.report(celError: located, in: "a {{ }} expression")
                }
                for var sourceError in error.errors {
                    if sourceError.line == 1 { sourceError.column += columnOffset }
                    sourceError.line += lineOffset
                    node.report(celError: sourceError, in: "a {{ }} expression")
                }
                return nil
            }
        case .sequence:
            guard let items = node.sequence() else { return nil }
            let templates = items.compactMap { template($0, variables: variables) }
            return templates.count == items.count ? .array(templates) : nil
        case .mapping(let mapping):
            var members: [(key: String, value: WorkflowTemplate)] = []
            var failed = false
            for (keyNode, valueNode) in mapping {
                let key = keyNode.string ?? ""
                guard let value = template(ConfigNode(node: valueNode, path: node.child(key), reader: node.reader), variables: variables) else {
                    failed = true
                    continue
                }
                members.append((key, value))
            }
            return failed ? nil : .object(members)
        case .alias:
            node.report("YAML aliases are not supported in workflows")
            return nil
        }
    }
}

extension WorkflowLoader {
    /// A `{{ }}` template elsewhere in the configuration (a webhook's payload).
    static func template(_ node: ConfigNode, variables: [String]) -> WorkflowTemplate? {
        WorkflowDocument(references: .init()).template(node, variables: variables)
    }
}
