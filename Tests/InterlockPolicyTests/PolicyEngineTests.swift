import InterlockPolicy
import Testing

@Suite struct PolicyEngineTests {
    func input(tool: String = "mail.send", args: CELValue = .map(CELMap()), scopes: [String] = [], spent: Double = 0) -> PolicyInput {
        PolicyInput(
            agent: .init(id: "mailer", scopes: scopes), run: .init(id: "r", spentUSD: spent), target: .init(kind: "tool", name: tool, sideEffects: "write"),
            args: { args }, timeMs: 1_790_000_000_000)
    }

    func args(bcc: [String]) -> CELValue {
        var map = CELMap()
        map.insert(.string("bcc"), .list(bcc.map(CELValue.string)))
        return .map(map)
    }

    @Test func denyWinsAndAllowRulesAreAnAllowList() throws {
        let engine = try PolicyEngine(rules: [
            PolicyRule(name: "mail-allowed", condition: #"target.name.startsWith("mail.")"#, effect: .allow, targets: ["tool:mail.*"]),
            PolicyRule(
                name: "no-external-bcc", condition: #"has(args.bcc) && !args.bcc.all(a, a.endsWith("@corp.example"))"#, effect: .deny,
                reason: "BCC stays inside"),
            PolicyRule(name: "deletes", condition: "true", effect: .requireApproval, reason: "a human decides", targets: ["tool:erp.delete_*"]),
        ])
        #expect(engine.decide(input(args: args(bcc: ["a@corp.example"]))).effect == .allow)
        let denied = engine.decide(input(args: args(bcc: ["a@corp.example", "x@gmail.com"])))
        #expect(denied.effect == .deny && denied.rule?.name == "no-external-bcc" && denied.reason == "BCC stays inside")
        // Rules whose targets do not cover the call are not evaluated for it.
        #expect(engine.decide(input(tool: "crm.read")).effect == .allow)
        let held = engine.decide(input(tool: "erp.delete_order"))
        #expect(held.effect == .requireApproval && held.rule?.name == "deletes")
        // Deny wins over a matching approval rule.
        let both = try PolicyEngine(rules: [
            PolicyRule(name: "hold", condition: "true", effect: .requireApproval, reason: "r"),
            PolicyRule(name: "stop", condition: "run.spent_usd > 2.0", effect: .deny, reason: "spent"),
        ])
        #expect(both.decide(input(spent: 2.5)).rule?.name == "stop")
        #expect(both.decide(input(spent: 1)).effect == .requireApproval)
    }

    @Test func shadowRulesAreRecordedNotApplied() throws {
        let engine = try PolicyEngine(rules: [PolicyRule(name: "try-me", condition: "true", effect: .deny, reason: "x", mode: .shadow)])
        let decision = engine.decide(input())
        #expect(decision.effect == .allow)
        #expect(decision.shadowMatches.map(\.name) == ["try-me"])
    }

    @Test func aRuleThatCannotBeEvaluatedFailsClosedUnlessToldOtherwise() throws {
        // `args.bcc` is missing: an error, not false.
        let closed = try PolicyEngine(rules: [PolicyRule(name: "bcc", condition: #"args.bcc.exists(a, a == "x")"#, effect: .deny, reason: "r")])
        let decision = closed.decide(input())
        #expect(decision.effect == .deny)
        #expect(decision.errors.first?.rule == "bcc")
        let open = try PolicyEngine(rules: [
            PolicyRule(name: "bcc", condition: #"args.bcc.exists(a, a == "x")"#, effect: .deny, reason: "r", onError: .failOpen),
        ])
        #expect(open.decide(input()).effect == .allow)
        // An allow rule that errors never lets a call through.
        let allow = try PolicyEngine(rules: [PolicyRule(name: "only", condition: "args.flag == true", effect: .allow)])
        #expect(allow.decide(input()).effect == .deny)
    }

    @Test func rulesAreTypeCheckedAtLoad() {
        #expect(throws: PolicyCompileErrors.self) { try PolicyEngine(rules: [PolicyRule(name: "typo", condition: "agent.idd == 'x'", effect: .deny)]) }
        #expect(throws: PolicyCompileErrors.self) { try PolicyEngine(rules: [PolicyRule(name: "not-bool", condition: "run.calls + 1", effect: .deny)]) }
        let errors = PolicyEngine.check(PolicyRule(name: "two", condition: "request.tim > 1 || target.nam == 'x'", effect: .deny))
        #expect(errors.count == 2)
        #expect(errors.first?.column == 9)
    }

    @Test func versionsChangeWithTheRuleText() {
        let rule = PolicyRule(name: "r", condition: "true", effect: .requireApproval)
        var edited = rule
        edited.condition = "1 == 1"
        #expect(rule.version != edited.version)
        #expect(rule.version == PolicyRule(name: "r", condition: "true", effect: .requireApproval, reason: "wording may change").version)
    }

    @Test func targetGlobs() {
        #expect(PolicyRule.glob("tool:erp.delete_*", matches: "tool:erp.delete_order"))
        #expect(!PolicyRule.glob("tool:erp.delete_*", matches: "tool:erp.read_order"))
        #expect(PolicyRule.glob("model:*", matches: "model:fast"))
        #expect(PolicyRule.glob("*:a*c", matches: "tool:abbbc"))
        #expect(!PolicyRule.glob("tool:a", matches: "tool:ab"))
    }
}
