import InterlockPolicy
import Testing

@Suite struct CELEngineTests {
    func eval(_ text: String, _ variables: [String: CELValue] = [:], costLimit: Int = 1_000_000) throws -> CELValue {
        var environment = CELEnvironment(costLimit: costLimit)
        for name in variables.keys { environment.variables[name] = .dyn }
        return try CELProgram(text, environment: environment).evaluate(variables)
    }

    func bool(_ text: String, _ variables: [String: CELValue] = [:]) throws -> Bool? {
        try eval(text, variables).boolValue
    }

    @Test func logicalOperatorsAbsorbErrorsAsTheSpecSays() throws {
        #expect(try bool("false && 1 / 0 == 1") == false)
        #expect(try bool("1 / 0 == 1 && false") == false)
        #expect(try bool("1 / 0 == 1 || true") == true)
        #expect(try bool("true || 1 / 0 == 1") == true)
        #expect(throws: CELError.self) { try eval("true && 1 / 0 == 1") }
        #expect(throws: CELError.self) { try eval("1 / 0 == 1 ? 1 : 2") }
        // all/exists: a deciding element wins over an error elsewhere.
        #expect(try bool("[0, 1].all(x, 1 / x > 5)") == false)
        #expect(try bool("[0, 1].exists(x, 1 / x == 1)") == true)
        #expect(throws: CELError.self) { try eval("[0, 1].all(x, 1 / x == 1)") }
    }

    @Test func integerArithmeticReportsOverflowAndDivisionByZero() throws {
        #expect(throws: CELError(.overflow, "integer overflow in addition")) { try eval("9223372036854775807 + 1") }
        #expect(throws: CELError.self) { try eval("-9223372036854775808 / -1") }
        #expect(throws: CELError.self) { try eval("1u - 2u") }
        #expect(throws: CELError(.divisionByZero, "modulus by zero")) { try eval("5 % 0") }
        #expect(try eval("-9223372036854775808").celEquals(.int(.min)))
    }

    @Test func policyStyleRulesOverJSONLikeArguments() throws {
        var bcc = CELMap()
        bcc.insert(.string("bcc"), .list([.string("a@corp.example"), .string("b@corp.example")]))
        let rule = #"args.bcc.all(a, a.endsWith("@corp.example"))"#
        #expect(try bool(rule, ["args": .map(bcc)]) == true)
        var outside = CELMap()
        outside.insert(.string("bcc"), .list([.string("a@corp.example"), .string("x@gmail.com")]))
        #expect(try bool(rule, ["args": .map(outside)]) == false)
        #expect(try bool("has(args.cc)", ["args": .map(bcc)]) == false)
        #expect(try bool("has(args.bcc) && size(args.bcc) == 2", ["args": .map(bcc)]) == true)
        #expect(throws: CELError.self) { try eval("args.cc", ["args": .map(bcc)]) }
    }

    @Test func costLimitStopsRunawayExpressions() throws {
        let nested = "[1,2,3,4,5,6,7,8,9,10].map(a, [1,2,3,4,5,6,7,8,9,10].map(b, [1,2,3,4,5,6,7,8,9,10].map(c, a * b * c)))"
        #expect(throws: CELError.self) { try eval(nested, costLimit: 500) }
        // The same expression under the default limit evaluates.
        guard case .list(let items) = try eval(nested) else {
            Issue.record("expected a list")
            return
        }
        #expect(items.count == 10)
    }

    @Test func matchesIsLinearTimeRE2() throws {
        // Classic catastrophic-backtracking patterns answer (a backtracking engine would not finish).
        let evil = String(repeating: "a", count: 5000) + "!"
        #expect(try bool("s.matches('^(a+)+$')", ["s": .string(evil)]) == false)
        #expect(try bool("s.matches('(a|aa)*b')", ["s": .string(evil)]) == false)
        #expect(try bool("s.matches('(a|a)*!$')", ["s": .string(evil)]) == true)
        #expect(try bool("'Hello World'.matches('(?i)^hello\\\\s+w')") == true)
        #expect(try bool("'abc'.matches('^[a-c]{3}$')") == true)
        #expect(try bool("'abcd'.matches('^[a-c]{3}$')") == false)
        #expect(try bool("'x-42'.matches('\\\\d+')") == true)
        #expect(try bool("'word boundary'.matches('\\\\bbound')") == true)
        #expect(try bool("'unbounded'.matches('\\\\bbound')") == false)
        #expect(try bool("'€uro'.matches('^\\\\p{Sc}')") == true)
        // Match spans (for custom guardrail patterns): leftmost, longest, non-overlapping, bounded.
        let regex = try CELRegex("a+b")
        #expect(regex.allMatches(in: Array("xaab ab aaxb".utf8), limit: 10) == [1..<4, 5..<7])
        #expect(try CELRegex("\\d").allMatches(in: Array(String(repeating: "7", count: 50_000).utf8), limit: 1_000).count == 1_000)
        #expect(try CELRegex("é+").allMatches(in: Array("caféé!".utf8), limit: 5) == [3..<7])
        // Backreferences are not RE2: a clear compile error, not a slow match.
        #expect(throws: CELSourceError.self) { try CELProgram("'aa'.matches('(a)\\\\1')") }
        #expect(throws: (any Error).self) { try CELRegex("a{1001}") }
    }

    @Test func timestampsAndDurations() throws {
        #expect(try bool("timestamp('2009-02-13T23:31:30Z').getHours('America/Los_Angeles') == 15") == true)
        #expect(try bool("timestamp('2009-02-13T23:31:30Z').getDayOfWeek() == 5") == true)
        #expect(try bool("timestamp('2024-03-01T00:00:00Z') - timestamp('2024-02-28T00:00:00Z') == duration('48h')") == true)
        #expect(try bool("duration('1h30m').getMinutes() == 90") == true)
        #expect(throws: CELError.self) { try eval("timestamp('9999-12-31T23:59:59Z') + duration('1s')") }
        #expect(try eval("string(duration('-1.5s'))").celEquals(.string("-1.5s")))
    }

    @Test func parserErrorsSayWhere() {
        do {
            _ = try CELParser.parse("a &&\n  b ===")
            Issue.record("expected a syntax error")
        } catch {
            #expect(error.line == 2)
            #expect(error.column == 7)
        }
        #expect(throws: CELSourceError.self) { try CELParser.parse("if + 1") }
        #expect(throws: CELSourceError.self) { try CELParser.parse(String(repeating: "(", count: 300) + "1" + String(repeating: ")", count: 300)) }
        #expect(throws: CELSourceError.self) { try CELParser.parse("'unterminated") }
    }

    @Test func checkerReportsUndeclaredNamesFieldsAndOverloads() throws {
        let agent = CELMessageType(name: "interlock.Agent", fields: ["id": .init(.string), "scopes": .init(.list(.string))])
        let environment = CELEnvironment(
            variables: ["agent": .message("interlock.Agent"), "args": .map(.string, .dyn)], messageTypes: ["interlock.Agent": agent])
        #expect(try CELChecker.check(#"args.bcc.all(a, a.endsWith("@corp.example"))"#, environment: environment) == .bool)
        #expect(try CELChecker.check("'admin' in agent.scopes", environment: environment) == .bool)
        #expect(try CELChecker.check("agent.scopes.map(s, size(s))", environment: environment) == .list(.int))
        do {
            _ = try CELChecker.check("agent.idd == 'x' && user.id == 'y'", environment: environment)
            Issue.record("expected check errors")
        } catch {
            #expect(error.errors.count == 2)
            #expect(error.errors[0].message.contains("undefined field 'idd'"))
            #expect(error.errors[1].message.contains("undeclared reference to 'user'"))
            #expect(error.errors[1].column == 21)
        }
        #expect(throws: CELCheckError.self) { try CELChecker.check("agent.id + 1", environment: environment) }
        #expect(throws: CELCheckError.self) { try CELChecker.check("agent.scopes.all(s, s)", environment: environment) }
    }
}

extension CELValue {
    func celEquals(_ other: CELValue) -> Bool { CELEnvironment().isEqual(self, other) && typeName == other.typeName }
}
