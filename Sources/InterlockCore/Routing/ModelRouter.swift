/// Orders the deployments of a model alias for one call.
///
/// Deployments are grouped by tier (lower first); within a tier the strategy decides:
/// `weighted` draws without replacement in proportion to weight, `leastLatency` prefers the
/// lowest latency EWMA (deployments with no samples yet go first, so they get measured), and
/// `lowestCost` prefers the cheapest price for the call's expected tokens. Unavailable
/// deployments (breaker open, throttled) are left out; the caller walks the list, so a failed
/// attempt moves on to the next candidate.
public enum ModelRouter {
    public struct Candidate: Sendable, Equatable {
        public var id: String
        public var tier: Int
        public var weight: Double
        public var price: ModelPrice
        public var latencyMs: Double?
        public var available: Bool
        /// Has capacity under its rate limits right now; preferred within its tier.
        public var hasCapacity: Bool

        public init(id: String, tier: Int = 0, weight: Double = 1, price: ModelPrice = .free, latencyMs: Double? = nil, available: Bool = true, hasCapacity: Bool = true) {
            self.id = id
            self.tier = tier
            self.weight = weight
            self.price = price
            self.latencyMs = latencyMs
            self.available = available
            self.hasCapacity = hasCapacity
        }
    }

    public static func rank(
        _ candidates: [Candidate], strategy: RoutingStrategy, expected usage: TokenUsage,
        using random: inout some RandomNumberGenerator
    ) -> [String] {
        let usable = candidates.filter(\.available)
        let tiers = Dictionary(grouping: usable, by: \.tier).sorted { $0.key < $1.key }
        var ranked: [String] = []
        for (_, members) in tiers {
            // Within a tier, deployments with capacity come before saturated ones.
            let open = members.filter(\.hasCapacity)
            let saturated = members.filter { !$0.hasCapacity }
            ranked += order(open, strategy: strategy, usage: usage, random: &random)
            ranked += order(saturated, strategy: strategy, usage: usage, random: &random)
        }
        return ranked
    }

    private static func order(
        _ members: [Candidate], strategy: RoutingStrategy, usage: TokenUsage, random: inout some RandomNumberGenerator
    ) -> [String] {
        switch strategy {
        case .weighted:
            var pool = members.filter { $0.weight > 0 }
            var result: [String] = []
            while !pool.isEmpty {
                let total = pool.reduce(0) { $0 + $1.weight }
                var point = Double.random(in: 0..<total, using: &random)
                var chosen = pool.count - 1
                for (index, candidate) in pool.enumerated() {
                    if point < candidate.weight { chosen = index; break }
                    point -= candidate.weight
                }
                result.append(pool.remove(at: chosen).id)
            }
            return result
        case .leastLatency:
            return members.enumerated().sorted { lhs, rhs in
                switch (lhs.element.latencyMs, rhs.element.latencyMs) {
                case (nil, nil): return lhs.offset < rhs.offset
                case (nil, _): return true
                case (_, nil): return false
                case (let l?, let r?): return l == r ? lhs.offset < rhs.offset : l < r
                }
            }.map(\.element.id)
        case .lowestCost:
            return members.enumerated().sorted { lhs, rhs in
                let l = lhs.element.price.cost(of: usage)
                let r = rhs.element.price.cost(of: usage)
                return l == r ? lhs.offset < rhs.offset : l < r
            }.map(\.element.id)
        }
    }
}
