/// What a run has used: model and tool calls, tokens and dollars, over all its steps.
public struct RunUsage: Sendable, Equatable {
    public var modelCalls: Int
    public var toolCalls: Int
    public var tokens: Int
    public var cost: USD

    public init(modelCalls: Int = 0, toolCalls: Int = 0, tokens: Int = 0, cost: USD = .zero) {
        self.modelCalls = modelCalls
        self.toolCalls = toolCalls
        self.tokens = tokens
        self.cost = cost
    }

    public static let zero = RunUsage()

    public static func + (lhs: RunUsage, rhs: RunUsage) -> RunUsage {
        RunUsage(modelCalls: lhs.modelCalls + rhs.modelCalls, toolCalls: lhs.toolCalls + rhs.toolCalls, tokens: lhs.tokens + rhs.tokens, cost: lhs.cost + rhs.cost)
    }

    public static func - (lhs: RunUsage, rhs: RunUsage) -> RunUsage {
        RunUsage(modelCalls: lhs.modelCalls - rhs.modelCalls, toolCalls: lhs.toolCalls - rhs.toolCalls, tokens: lhs.tokens - rhs.tokens, cost: lhs.cost - rhs.cost)
    }

    public var json: JSONValue {
        ["model_calls": .integer(Int64(modelCalls)), "tool_calls": .integer(Int64(toolCalls)), "tokens": .integer(Int64(tokens)), "cost_usd": .number(cost.dollars)]
    }
}

/// A run's budgets as a circuit breaker: every model and tool call the run makes reserves its
/// worst case here first, and is refused (the run stopped) when that would pass a limit.
/// Concurrent calls of one run can therefore never spend past a limit by more than what
/// they reserved — and they reserve before they run.
public struct RunBudget: Sendable {
    public var limits: RunBudgetLimits
    public private(set) var used: RunUsage
    public private(set) var reserved = RunUsage.zero

    public init(limits: RunBudgetLimits, used: RunUsage = .zero) {
        self.limits = limits
        self.used = used
    }

    public enum Decision: Sendable, Equatable {
        case granted(RunUsage)
        /// The limit (by its config key) the call would pass, and a sentence saying so.
        case exceeded(limit: String, message: String)
    }

    /// Reserves one call: a model call with its estimated tokens and worst-case cost, or a
    /// tool call.
    public mutating func reserve(model: Bool, tokens: Int, cost: USD) -> Decision {
        let ask = RunUsage(modelCalls: model ? 1 : 0, toolCalls: model ? 0 : 1, tokens: tokens, cost: cost)
        let after = used + reserved + ask
        if model, let limit = limits.maxModelCalls, after.modelCalls > limit {
            return .exceeded(limit: "max_model_calls", message: "The run has made its \(limit) model calls allowed (max_model_calls).")
        }
        if !model, let limit = limits.maxToolCalls, after.toolCalls > limit {
            return .exceeded(limit: "max_tool_calls", message: "The run has made its \(limit) tool calls allowed (max_tool_calls).")
        }
        if let limit = limits.maxTokens, tokens > 0, after.tokens > limit {
            return .exceeded(
                limit: "max_tokens",
                message: "The next model call may use up to \(tokens) tokens; with \((used + reserved).tokens) used or reserved that passes the run's \(limit) (max_tokens).")
        }
        if let limit = limits.maxCost, cost > .zero, after.cost > limit {
            return .exceeded(
                limit: "max_usd",
                message: "The next call may cost up to $\(cost); with $\((used + reserved).cost) spent or reserved that passes the run's $\(limit) (max_usd).")
        }
        reserved = reserved + ask
        return .granted(ask)
    }

    /// Replaces a reservation with what the call really used.
    public mutating func settle(_ reservation: RunUsage, actual: RunUsage) {
        reserved = reserved - reservation
        used = used + actual
    }

    /// Usage recorded elsewhere (a restarted node reading the run's checkpoint).
    public mutating func restore(used: RunUsage) {
        self.used = used
    }
}
