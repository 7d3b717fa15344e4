/// An amount of US dollars, held as an integer number of nano-dollars (1e-9 USD), so that
/// budgets add and compare exactly however many small calls they count.
public struct USD: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var nanos: Int64

    public init(nanos: Int64) { self.nanos = nanos }

    public init(dollars: Double) { self.nanos = Int64((dollars * 1e9).rounded()) }

    public static let zero = USD(nanos: 0)

    public var dollars: Double { Double(nanos) / 1e9 }

    public static func + (lhs: USD, rhs: USD) -> USD { USD(nanos: lhs.nanos + rhs.nanos) }
    public static func - (lhs: USD, rhs: USD) -> USD { USD(nanos: lhs.nanos - rhs.nanos) }
    public static func += (lhs: inout USD, rhs: USD) { lhs.nanos += rhs.nanos }
    public static func -= (lhs: inout USD, rhs: USD) { lhs.nanos -= rhs.nanos }
    public static func < (lhs: USD, rhs: USD) -> Bool { lhs.nanos < rhs.nanos }

    /// Dollars with up to nine decimals and no trailing zeros, e.g. `0.000123`.
    public var description: String {
        // Written on bytes: it goes into a response header on every call.
        ASCIIText.fixedPoint(nanos, scale: 9)
    }
}

/// Model token usage of one call.
public struct TokenUsage: Sendable, Hashable {
    /// Prompt tokens, including cached ones.
    public var inputTokens: Int
    public var outputTokens: Int
    /// The part of `inputTokens` that was served from the provider's prompt cache.
    public var cachedInputTokens: Int

    public init(inputTokens: Int = 0, outputTokens: Int = 0, cachedInputTokens: Int = 0) {
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.cachedInputTokens = cachedInputTokens
    }

    public static let zero = TokenUsage()

    /// The largest count Interlock takes from an upstream's usage or an agent's `max_tokens`
    /// (about 1.1 trillion tokens). Counts are capped here where they come in, so their sums,
    /// reservations and costs cannot overflow whatever a peer sends.
    public static let maximumCount = 1 << 40

    /// A reported or requested count as Interlock keeps it: 0 when absent or negative, at most
    /// `maximumCount`.
    public static func count(_ value: Int64?) -> Int {
        Int(min(max(value ?? 0, 0), Int64(maximumCount)))
    }

    public var totalTokens: Int {
        let (sum, overflow) = inputTokens.addingReportingOverflow(outputTokens)
        return overflow ? .max : sum
    }
}

/// Prices of a deployment in US dollars per million tokens.
public struct ModelPrice: Sendable, Hashable {
    public var inputPerMillion: Double
    public var outputPerMillion: Double
    public var cachedInputPerMillion: Double

    public init(inputPerMillion: Double = 0, outputPerMillion: Double = 0, cachedInputPerMillion: Double? = nil) {
        self.inputPerMillion = inputPerMillion
        self.outputPerMillion = outputPerMillion
        self.cachedInputPerMillion = cachedInputPerMillion ?? inputPerMillion
    }

    public static let free = ModelPrice()

    public func cost(of usage: TokenUsage) -> USD {
        let uncached = max(0, usage.inputTokens - usage.cachedInputTokens)
        // Price per million tokens in dollars = nano-dollars per thousandth of a token; scale once.
        let nanos =
            Double(uncached) * inputPerMillion * 1000
            + Double(usage.cachedInputTokens) * cachedInputPerMillion * 1000
            + Double(usage.outputTokens) * outputPerMillion * 1000
        // At most 2^56 nano-dollars (about $72 million) a call: sums of many calls still fit.
        return USD(nanos: Int64(min(nanos.rounded(.up), Double(1 << 56))))
    }
}
