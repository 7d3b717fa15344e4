import FoundationEssentials
import InterlockConfig
import InterlockCore
import Testing

@Suite struct WorkflowLoaderTests {
    static let valid = """
        workflow: invoices
        description: Reconcile an invoice
        agent: bot
        priority: 5
        input:
          type: object
          required: [text]
        budgets: {max_steps: 40, max_model_calls: 10, max_tool_calls: 20, max_tokens: 50000, max_usd: 0.25, max_wall_time_ms: 600000}
        on:
          event: invoice.received
          if: event.payload.amount > 100
        output:
          reads: [intake, checks]
          value: {po: "{{ intake.po }}", ok: "{{ checks.all(c, c.ok) }}"}
        steps:
          - id: intake
            kind: agent
            agent: intake_bot
            model: fast
            reads: [input]
            instructions: |
              Extract the purchase order from {{ input.text }}
            tools: [erp.lookup]
            output_schema: {type: object, required: [po]}
            max_iterations: 4
            retry: {max_attempts: 3, initial_backoff_ms: 10, retry_on: [invalid_output]}
            timeout_ms: 30000
          - id: checks
            kind: map
            reads: [intake]
            items: "{{ intake.lines }}"
            max_concurrency: 2
            steps:
              - id: check_line
                kind: tool
                tool: erp.check
                reads: [intake]
                arguments: {po: "{{ intake.po }}", line: "{{ item }}", position: "{{ index }}", note: "line {{ index + 1 }}"}
          - id: route
            kind: branch
            reads: [checks]
            cases:
              - if: checks.exists(c, !c.ok)
                next: review
            default: done
          - id: review
            kind: parallel
            branches:
              legal:
                - {id: ask, kind: approval, message: "Pay {{ intake.po }}?", reads: [intake], timeout_ms: 86400000}
              finance:
                - {id: amount, kind: input, message: "Amount?", schema: {type: number}}
          - {id: wait, kind: wait_event, event: po.approved, reads: [intake], if: "event.payload.po == intake.po", timeout_ms: 1000}
          - {id: nap, kind: sleep, duration_ms: 250}
          - {id: done, kind: emit, event: invoice.done, reads: [intake], payload: {po: "{{ intake.po }}", cost: "${NOT_INTERPOLATED}"}}
        """

    @Test func aWorkflowWithEveryStepKindLoads() throws {
        let definition = try WorkflowLoader.parse(
            Self.valid, file: "wf.yaml", references: WorkflowReferences(agents: ["bot", "intake_bot"], models: ["fast"]))
        #expect(definition.name == "invoices" && definition.agentID == "bot" && definition.priority == 5)
        #expect(definition.steps.map(\.id) == ["intake", "checks", "route", "review", "wait", "nap", "done"])
        #expect(definition.budgets == RunBudgetLimits(maxSteps: 40, maxModelCalls: 10, maxToolCalls: 20, maxTokens: 50_000, maxCost: USD(dollars: 0.25), maxWallTimeMs: 600_000))
        #expect(definition.triggers.first?.eventType == "invoice.received")
        #expect(definition.hash.count == 64 && definition.source == Self.valid)
        guard case .agent(let agent) = definition.steps[0].kind else { Issue.record("intake is an agent step"); return }
        #expect(agent.model == "fast" && agent.tools == ["erp.lookup"] && agent.maxIterations == 4)
        #expect(definition.steps[0].retry == StepRetry(maxAttempts: 3, initialBackoffMs: 10, retryOn: ["invalid_output"]))
        #expect(definition.steps[0].agentID == "intake_bot" && definition.steps[0].timeoutMs == 30_000)
        #expect(definition.step("check_line") != nil && definition.step("amount") != nil, "nested steps are found by id")
        guard case .tool(_, let arguments) = definition.step("check_line")?.kind else { Issue.record("check_line is a tool step"); return }
        let rendered = try arguments.render(["intake": .init(json: ["po": "P-9"]), "item": .init(json: ["sku": "x"]), "index": .int(1)])
        #expect(rendered == ["po": "P-9", "line": ["sku": "x"], "position": 1, "note": "line 2"])
        guard case .emit(_, let payload, _) = definition.steps[6].kind else { Issue.record("done is an emit step"); return }
        #expect(try payload.render(["intake": .init(json: ["po": "P"])])["cost"] == "${NOT_INTERPOLATED}", "workflow text is not interpolated")
    }

    static func errors(_ text: String, references: WorkflowReferences = .init()) -> [String] {
        do {
            _ = try WorkflowLoader.parse(text, file: "wf.yaml", references: references)
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func everyMistakeIsReportedWithItsLine() {
        let lines = Self.errors(
            """
            workflow: broken
            agent: bott
            steps:
              - id: first
                kind: tol
              - id: second
                kind: tool
                tool: a.b
                reads: [third]
                next: nowhere
              - id: third
                kind: agent
                model: slow
                instructions: "Use {{ secret }}"
              - id: third
                kind: sleep
                duration_ms: 5
                bogus: 1
              - id: input
                kind: branch
                cases:
                  - if: "1 + 1"
                    next: end
            """, references: WorkflowReferences(agents: ["bot"], models: ["fast"]))
        let expected = [
            "wf.yaml:2:8: agent: there is no agent 'bott' in the configuration; did you mean 'bot'?",
            "wf.yaml:5:11: steps[0].kind: 'tol' is not a step kind",
            "wf.yaml:9:12: steps[1].reads: 'third' is not 'input' or a step declared before this one",
            "wf.yaml:10:11: steps[1].next: 'next' names 'nowhere', which is not a step of this list",
            "wf.yaml:13:12: steps[2].model: there is no model alias 'slow' in the configuration",
            "wf.yaml:14:26: steps[2].instructions: undeclared reference to 'secret' (in a {{ }} expression)",
            "wf.yaml:15:9: steps[3].id: duplicate step id 'third'",
            "wf.yaml:18:5: steps[3].bogus: unknown key 'bogus'",
            "wf.yaml:19:9: steps[4].id: 'input' is reserved",
            "wf.yaml:22:14: steps[4].cases[0].if: the expression is a int, expected bool",
        ]
        for prefix in expected {
            #expect(lines.contains { $0.hasPrefix(prefix) }, "missing \(prefix) in \(lines.joined(separator: "\n"))")
        }
        #expect(lines.contains { $0.contains("14:") && $0.contains("secret") }, "an undeclared name in a template is an error at its line: \(lines)")
        #expect(lines.count == expected.count, "\(lines.joined(separator: "\n"))")
    }

    @Test func templatesSeeOnlyDeclaredReadsAndJumpsStayInTheirList() {
        let lines = Self.errors(
            """
            workflow: w
            agent: a
            steps:
              - id: one
                kind: tool
                tool: t.x
              - id: two
                kind: tool
                tool: t.y
                arguments:
                  value: "{{ one.x }}"
              - id: fan
                kind: parallel
                branches:
                  left:
                    - {id: l1, kind: sleep, duration_ms: 1, next: one}
            """)
        #expect(lines.contains { $0.hasPrefix("wf.yaml:11:") && $0.contains("one") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("wf.yaml:16:") && $0.contains("not a step of this list") }, "\(lines)")
        #expect(Self.errors("workflow: w\nagent: a\nsteps: [{id: x, kind: sleep, duration_ms: 1}]\n").isEmpty)
        #expect(Self.errors("workflow: w\nagent: a\n").first?.contains("missing required key 'steps'") == true)
        #expect(Self.errors("workflow: w\nagent: a\nsteps: [{id: b, kind: branch, cases: [{if: 'true', next: b}]}]\n").first?.contains("jumps to itself") == true)
        #expect(
            Self.errors("workflow: w\nagent: a\nsteps: [{id: b, kind: wait_event, event: x, after: nope}]\n").first?.contains("'after' must name one of the step's reads")
                == true)
        #expect(Self.errors("workflow: [\n").first?.contains("invalid YAML") == true)
    }

    @Test func theConfigurationLoadsItsWorkflowFilesAndReportsTheirErrorsInThoseFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("wf-config-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data("workflow: good\nagent: bot\nsteps: [{id: a, kind: sleep, duration_ms: 1}]\n".utf8).write(to: URL(fileURLWithPath: directory + "/good.yaml"))
        try Data("workflow: bad\nagent: nobody\nsteps:\n  - {id: a, kind: slep}\n".utf8).write(to: URL(fileURLWithPath: directory + "/bad.yaml"))
        let config = """
            agents: [{ id: bot }]
            workflows:
              files: [good.yaml]
              max_active_runs: 8
              webhook: { url: "http://127.0.0.1:9/hook", payload: { text: "{{ notification.type }}" } }
            """
        let loaded = try ConfigLoader.parse(config, file: directory + "/interlock.yaml", environment: [:])
        #expect(loaded.workflows.definitions.map(\.name) == ["good"] && loaded.workflows.maxActiveRuns == 8)
        #expect(loaded.workflows.webhook?.payload != nil)
        do {
            _ = try ConfigLoader.parse(
                config.replacing("[good.yaml]", with: "[good.yaml, bad.yaml, missing.yaml]"), file: directory + "/interlock.yaml", environment: [:])
            Issue.record("expected errors")
        } catch {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix(directory + "/bad.yaml:2:8: agent: there is no agent 'nobody'") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix(directory + "/bad.yaml:4:") && $0.contains("'slep' is not a step kind") }, "\(lines)")
            #expect(lines.contains { $0.contains("interlock.yaml:3:") && $0.contains("missing.yaml") }, "\(lines)")
        }
    }
}
