public import InterlockConfig
public import InterlockCore
public import InterlockStore
import Synchronization

/// The workflows this node knows: the current definition of each name (config files first,
/// then the newest posted through the API), and every version a run started with, by hash —
/// a run always continues with the definition it started with.
public final class WorkflowCatalog: Sendable {
    private struct State {
        var current: [String: WorkflowDefinition] = [:]
        var byHash: [String: WorkflowDefinition] = [:]
        /// Names defined by configuration files (the API cannot replace them).
        var fromConfig: Set<String> = []
    }

    private let state = Mutex(State())
    private let store: any RunStore
    private let references: @Sendable () -> WorkflowReferences

    public init(store: any RunStore, references: @escaping @Sendable () -> WorkflowReferences) {
        self.store = store
        self.references = references
    }

    /// Adopts the configuration's definitions (and keeps their text, so runs can resume
    /// whatever the files say later) and the workflows posted earlier.
    public func load(_ settings: WorkflowSettings, nowMs: Int64) async throws {
        for definition in settings.definitions {
            try await store.saveWorkflowVersion(
                WorkflowVersionRecord(
                    hash: definition.hash, name: definition.name, source: definition.source, origin: settings.origins[definition.name] ?? "config",
                    createdMs: nowMs))
        }
        var posted: [WorkflowDefinition] = []
        for version in try await store.latestWorkflowVersions(origin: "api") where !settings.definitions.contains(where: { $0.name == version.name }) {
            if let definition = try? WorkflowLoader.parse(version.source, file: "workflow \(version.name)", references: references()) {
                posted.append(definition)
            }
        }
        state.withLock { state in
            for definition in settings.definitions + posted {
                state.current[definition.name] = definition
                state.byHash[definition.hash] = definition
            }
            state.fromConfig = Set(settings.definitions.map(\.name))
        }
    }

    /// Adds (or replaces) a workflow posted through the API: validated against this node's
    /// agents and models, kept in the store, current from now on.
    public func define(_ text: String, nowMs: Int64) async throws(GatewayError) -> WorkflowDefinition {
        let definition: WorkflowDefinition
        do {
            definition = try WorkflowLoader.parse(text, file: "workflow", references: references())
        } catch {
            throw GatewayError(
                kind: .invalidRequest, code: "invalid_workflow", message: "The workflow is not valid: " + error.diagnostics.map(\.description).joined(separator: "; "),
                details: ["errors": .array(error.diagnostics.map { .string($0.description) })])
        }
        if state.withLock({ $0.fromConfig.contains(definition.name) }) {
            throw GatewayError(
                kind: .conflict, code: "workflow_defined_in_config",
                message: "Workflow '\(definition.name)' is defined in the configuration; change it there.")
        }
        do {
            try await store.saveWorkflowVersion(
                WorkflowVersionRecord(hash: definition.hash, name: definition.name, source: definition.source, origin: "api", createdMs: nowMs))
        } catch {
            throw GatewayError(kind: .internal, code: "store_unavailable", message: "Interlock could not store the workflow.")
        }
        state.withLock { state in
            state.current[definition.name] = definition
            state.byHash[definition.hash] = definition
        }
        return definition
    }

    public func current(_ name: String) -> WorkflowDefinition? {
        state.withLock { $0.current[name] }
    }

    public func all() -> [WorkflowDefinition] {
        state.withLock { $0.current.values.sorted { $0.name < $1.name } }
    }

    /// The definition a run started with.
    public func definition(hash: String) async throws -> WorkflowDefinition {
        if let known = state.withLock({ $0.byHash[hash] }) { return known }
        guard let version = try await store.workflowVersion(hash: hash) else {
            throw StepError(code: "workflow_unavailable", message: "The definition this run started with (\(hash.prefix(12))) is not in the store.", retryable: false)
        }
        // Checked again with today's references only for syntax: the agents and models it names
        // may have changed, which the calls themselves will report.
        let definition: WorkflowDefinition
        do {
            definition = try WorkflowLoader.parse(version.source, file: "workflow \(version.name)")
        } catch {
            throw StepError(code: "workflow_unavailable", message: "The definition this run started with no longer loads: \(error)", retryable: false)
        }
        state.withLock { $0.byHash[hash] = definition }
        return definition
    }
}
