import ArgumentParser
import FoundationEssentials
import InterlockCore
import NIOHTTP1

/// `interlock run WORKFLOW --input JSON [--wait]`: starts a run through a running server.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a workflow run on a running server (and wait for it with --wait).")

    @OptionGroup var client: AdminClientOptions

    @Argument(help: "The workflow's name.")
    var workflow: String

    @Option(name: .long, help: "The run's input, as JSON (default {}).")
    var input: String = "{}"

    @Option(name: .long, help: "A key that makes a retried start return the first run instead of starting another.")
    var idempotencyKey: String?

    @Flag(name: .long, help: "Wait until the run finishes; print its output. Exit 1 unless it completed.")
    var wait = false

    @Option(name: .long, help: "With --wait: give up after this many seconds (0: never).")
    var timeoutS: Int = 0

    func run() async throws {
        guard let parsed = try? JSONParser.parse(input) else {
            printError("interlock run: --input is not JSON")
            throw ExitCode(2)
        }
        var body: JSONObject = ["workflow": .string(workflow), "input": parsed]
        if let idempotencyKey { body["idempotency_key"] = .string(idempotencyKey) }
        var run = try await client.send(.POST, "/v1/runs", body: .object(body), command: "run")
        let id = run["id"]?.stringValue ?? ""
        guard wait else {
            print("\(id)\t\(run["status"]?.stringValue ?? "")")
            return
        }
        printError("run \(id) started")
        let deadline = timeoutS > 0 ? ContinuousClock.now + .seconds(timeoutS) : nil
        var announced = Set<String>()
        var lastStatus = ""
        while true {
            let status = run["status"]?.stringValue ?? ""
            if status != lastStatus {
                printError("run \(id): \(status)")
                lastStatus = status
            }
            if ["completed", "failed", "cancelled", "stopped_by_budget"].contains(status) { break }
            if status == "waiting" {
                // Say once what each person is asked, and how to answer.
                let approvals = try await client.send(.GET, "/v1/approvals?status=pending&run=\(id)", command: "run")
                for approval in approvals["data"]?.arrayValue ?? [] {
                    guard let approvalID = approval["id"]?.stringValue, announced.insert(approvalID).inserted else { continue }
                    let verb = approval["kind"] == "input" ? "approve \(approvalID) --answer '<json>'" : "approve \(approvalID)"
                    printError("  waiting for a person: \(approval["reason"]?.stringValue ?? "") — interlock approvals \(verb)")
                }
            }
            if let deadline, ContinuousClock.now >= deadline {
                printError("interlock run: still \(status) after \(timeoutS) s")
                throw ExitCode(1)
            }
            try await Task.sleep(for: .milliseconds(250))
            run = try await client.send(.GET, "/v1/runs/\(id)", command: "run")
        }
        if run["status"] == "completed" {
            print(JSONWriter.string(run["output"] ?? .null))
            return
        }
        printError("run \(id) \(run["status"]?.stringValue ?? ""): \(run["error"]?["message"]?.stringValue ?? "")")
        throw ExitCode(1)
    }
}

/// `interlock runs list|show|cancel|pause|resume|retry|fork`.
struct Runs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look at and steer workflow runs on a running server.",
        subcommands: [RunsList.self, RunsShow.self, RunsControl.Cancel.self, RunsControl.Pause.self, RunsControl.Resume.self, RunsControl.Retry.self, RunsFork.self])
}

struct RunsList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List runs, newest first.")

    @OptionGroup var client: AdminClientOptions
    @Option(name: .long, help: "Only runs in this status (queued, running, waiting, paused, completed, failed, cancelled, stopped_by_budget).")
    var status: String?
    @Option(name: .long, help: "Only runs of this workflow.") var workflow: String?
    @Option(name: .long, help: "At most this many (1-1000).") var limit: Int = 50
    @Flag(name: .long, help: "Print the API's JSON instead of a table.") var json = false

    func run() async throws {
        var path = "/v1/runs?limit=\(limit)"
        if let status { path += "&status=\(status)" }
        if let workflow { path += "&workflow=\(workflow)" }
        let answer = try await client.send(.GET, path, command: "runs list")
        if json {
            print(JSONWriter.string(answer))
            return
        }
        let rows = answer["data"]?.arrayValue ?? []
        guard !rows.isEmpty else {
            print("no runs")
            return
        }
        print("ID\tWORKFLOW\tSTATUS\tSTARTED BY\tTOOL CALLS\tMODEL CALLS\tCOST USD")
        for row in rows {
            let usage = row["usage"]
            print(
                [
                    row["id"]?.stringValue ?? "", row["workflow"]?.stringValue ?? "", row["status"]?.stringValue ?? "", row["started_by"]?.stringValue ?? "",
                    "\(usage?["tool_calls"]?.int64Value ?? 0)", "\(usage?["model_calls"]?.int64Value ?? 0)", "\(usage?["cost_usd"]?.doubleValue ?? 0)",
                ].joined(separator: "\t"))
        }
    }
}

struct RunsShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a run: status, steps, output, usage against budgets.")

    @OptionGroup var client: AdminClientOptions
    @Argument(help: "The run id (run_...).") var id: String
    @Flag(name: .long, help: "Print the API's JSON.") var json = false

    func run() async throws {
        let run = try await client.send(.GET, "/v1/runs/\(id)", command: "runs show")
        if json {
            print(JSONWriter.string(run))
            return
        }
        print("run \(id)  workflow \(run["workflow"]?.stringValue ?? "")  status \(run["status"]?.stringValue ?? "")")
        if let error = run["error"] { print("error: \(error["code"]?.stringValue ?? ""): \(error["message"]?.stringValue ?? "")") }
        if let supervisor = run["supervisor"]?.stringValue { print("supervisor: \(supervisor)") }
        for (limit, entry) in run["budget_consumed"]?.objectValue ?? JSONObject() {
            print("budget \(limit): \(JSONWriter.string(entry["used"] ?? .null)) of \(JSONWriter.string(entry["limit"] ?? .null))")
        }
        print("STEP\tKIND\tSTATUS\tATTEMPT\tDETAIL")
        for step in run["steps"]?.arrayValue ?? [] {
            var detail = ""
            if let error = step["error"] { detail = "\(error["code"]?.stringValue ?? ""): \(error["message"]?.stringValue ?? "")" }
            if let wait = step["waiting_for"] { detail = "waiting for \(JSONWriter.string(wait))" }
            if let output = step["output"], detail.isEmpty {
                let text = JSONWriter.string(output)
                detail = text.count > 100 ? String(text.prefix(97)) + "..." : text
            }
            print(
                [
                    step["path"]?.stringValue ?? "", step["kind"]?.stringValue ?? "", step["status"]?.stringValue ?? "", "\(step["attempt"]?.int64Value ?? 1)",
                    detail,
                ].joined(separator: "\t"))
        }
        if let output = run["output"], output != .null { print("output: \(JSONWriter.string(output))") }
    }
}

enum RunsControl {
    static func send(_ client: AdminClientOptions, _ id: String, _ verb: String, body: JSONObject) async throws {
        let run = try await client.send(.POST, "/v1/runs/\(id)/\(verb)", body: .object(body), command: "runs \(verb)")
        print("\(id): \(verb) requested (was \(run["status"]?.stringValue ?? "?"))")
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a run (a step in flight is stopped).")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The run id.") var id: String
        @Option(name: .long, help: "Why (kept in the history and the audit log).") var reason: String?
        func run() async throws { try await RunsControl.send(client, id, "cancel", body: reason.map { ["reason": .string($0)] } ?? [:]) }
    }

    struct Pause: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a run after the steps in flight.")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The run id.") var id: String
        func run() async throws { try await RunsControl.send(client, id, "pause", body: [:]) }
    }

    struct Resume: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused run.")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The run id.") var id: String
        func run() async throws { try await RunsControl.send(client, id, "resume", body: [:]) }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "retry", abstract: "Send a failed or budget-stopped run on: its failed steps get another attempt.")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The run id.") var id: String
        @Option(name: .long, help: "New budgets as JSON, e.g. '{\"max_usd\": 2}'.") var budgets: String?
        func run() async throws {
            var body = JSONObject()
            if let budgets {
                guard let parsed = try? JSONParser.parse(budgets) else {
                    printError("interlock runs retry: --budgets is not JSON")
                    throw ExitCode(2)
                }
                body["budgets"] = parsed
            }
            try await RunsControl.send(client, id, "retry", body: body)
        }
    }
}

struct RunsFork: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fork", abstract: "Start a new run from a checkpoint of another (its history up to --at-seq).")
    @OptionGroup var client: AdminClientOptions
    @Argument(help: "The run id.") var id: String
    @Option(name: .long, help: "The history position to fork at (default: the last).") var atSeq: Int?
    @Flag(name: .long, help: "Go on with the workflow's current definition instead of the run's.") var latestDefinition = false

    func run() async throws {
        var body: JSONObject = ["latest_definition": .bool(latestDefinition)]
        if let atSeq { body["at_seq"] = .integer(Int64(atSeq)) }
        let fork = try await client.send(.POST, "/v1/runs/\(id)/fork", body: .object(body), command: "runs fork")
        print("\(fork["id"]?.stringValue ?? "")\t\(fork["status"]?.stringValue ?? "")")
    }
}
