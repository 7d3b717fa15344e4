import ArgumentParser
import AsyncHTTPClient
import FoundationEssentials
import InterlockConfig
import InterlockCore
import InterlockPolicy
import NIOCore
import NIOHTTP1

struct Policy: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Work with policy rules.", subcommands: [PolicyTest.self])
}

/// `interlock policy test --config interlock.yaml cases.yaml`: each case's input through the
/// config's rules; exit 1 if any decision differs from the expected one.
struct PolicyTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test", abstract: "Run policy test cases (YAML: input → expected decision) against the rules of a configuration.")

    @Option(name: .long, help: "The configuration file whose policy rules are tested (default: the file's own 'config:').")
    var config: String?

    @Argument(help: "The test cases file (YAML).")
    var cases: String

    func run() throws {
        let environment = ProcessInfo.processInfo.environment
        let engine: PolicyEngine
        let tests: [PolicyTestCase]
        do {
            let file = try PolicyTestLoader.loadFile(path: cases, environment: environment)
            guard let configPath = config ?? file.config else {
                printError("interlock policy test: name the configuration with --config FILE or 'config:' in \(cases)")
                throw ExitCode(2)
            }
            let configuration = try ConfigLoader.load(path: configPath, environment: environment)
            engine = try PolicyEngine(rules: configuration.policy.rules, costLimit: configuration.policy.costLimit)
            tests = file.cases
        } catch let exit as ExitCode {
            throw exit
        } catch let error as ConfigError {
            printError(error.description)
            throw ExitCode(2)
        } catch {
            printError("\(error)")
            throw ExitCode(2)
        }
        var failed = 0
        for test in tests {
            let decision = engine.decide(test.input)
            var problems: [String] = []
            if decision.effect != test.expect { problems.append("expected \(test.expect.rawValue), got \(decision.effect.rawValue)") }
            if let rule = test.rule, decision.rule?.name != rule { problems.append("expected rule '\(rule)' to decide, got \(decision.rule.map { "'\($0.name)'" } ?? "no rule")") }
            for (rule, message) in decision.errors { problems.append("rule '\(rule)' could not be evaluated: \(message)") }
            if problems.isEmpty {
                print("PASS \(test.name)")
            } else {
                failed += 1
                print("FAIL \(test.name)")
                for problem in problems { print("  \(cases):\(test.line): \(problem)") }
            }
        }
        print("\(tests.count - failed)/\(tests.count) cases passed")
        if failed > 0 { throw ExitCode(1) }
    }
}

struct Approvals: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List and answer what waits for a person: calls held by require_approval policies, workflow approval and input steps.",
        subcommands: [ApprovalsList.self, ApprovalsDecide.Approve.self, ApprovalsDecide.Reject.self])
}

/// Where the server is and who is asking.
struct AdminClientOptions: ParsableArguments {
    @Option(name: .long, help: "The server's base URL (default: from --config, else http://127.0.0.1:8080).")
    var url: String?

    @Option(name: .long, help: "A configuration file (for the server's address).")
    var config: String?

    @Option(name: .long, help: "An operator token (default: $INTERLOCK_OPERATOR_TOKEN).")
    var token: String?

    func baseURL() throws -> String {
        if let url { return url.hasSuffix("/") ? String(url.dropLast()) : url }
        if let config {
            do {
                let configuration = try ConfigLoader.load(path: config, environment: ProcessInfo.processInfo.environment)
                let host = configuration.server.host == "0.0.0.0" ? "127.0.0.1" : configuration.server.host
                return "http://\(host):\(configuration.server.port)"
            } catch {
                printError("\(error)")
                throw ExitCode(2)
            }
        }
        return "http://127.0.0.1:8080"
    }

    func operatorToken(_ command: String) throws -> String {
        guard let token = token ?? ProcessInfo.processInfo.environment["INTERLOCK_OPERATOR_TOKEN"], !token.isEmpty else {
            printError("interlock \(command): give --token or set INTERLOCK_OPERATOR_TOKEN")
            throw ExitCode(2)
        }
        return token
    }

    /// Sends one request to the server's API; the JSON answer, or exit 1 with the server's error.
    func send(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil, command: String = "approvals") async throws -> JSONValue {
        let url = try baseURL() + path
        let token = try operatorToken(command)
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "authorization", value: "Bearer \(token)")
        if let body {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: JSONWriter.bytes(body)))
        }
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            let response = try await client.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 16 * 1024 * 1024)
            try await client.shutdown()
            let answer = (try? JSONParser.parse(Array(bytes.readableBytesView))) ?? .null
            guard (200..<300).contains(Int(response.status.code)) else {
                printError("interlock \(command): \(response.status.code) \(answer["error"]?["message"]?.stringValue ?? response.status.reasonPhrase)")
                throw ExitCode(1)
            }
            return answer
        } catch let exit as ExitCode {
            throw exit
        } catch {
            try? await client.shutdown()
            printError("interlock \(command): cannot reach \(url): \(error)")
            throw ExitCode(1)
        }
    }
}

struct ApprovalsList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List approvals (pending ones by default).")

    @OptionGroup var client: AdminClientOptions

    @Option(name: .long, help: "pending (default), approved, rejected, consumed, expired or all.")
    var status: String = "pending"

    @Option(name: .long, help: "Only this agent's approvals.")
    var agent: String?

    @Option(name: .long, help: "Only this run's approvals.")
    var run: String?

    @Flag(name: .long, help: "Print the API's JSON instead of a table.")
    var json = false

    func run() async throws {
        var path = "/v1/approvals?status=\(status)"
        if let agent { path += "&agent=\(agent)" }
        if let run { path += "&run=\(run)" }
        let answer = try await client.send(.GET, path)
        if json {
            print(JSONWriter.string(answer))
            return
        }
        let rows = answer["data"]?.arrayValue ?? []
        if rows.isEmpty {
            print("no \(status == "all" ? "" : status + " ")approvals")
            return
        }
        print("ID\tKIND\tSTATUS\tAGENT\tTARGET\tPOLICY\tREASON\tARGUMENTS")
        for row in rows {
            func field(_ name: String) -> String { row[name]?.stringValue ?? "" }
            let arguments: String = row["arguments"].map { JSONWriter.string($0) } ?? ""
            let shown: String = arguments.count > 120 ? String(arguments.prefix(117)) + "..." : arguments
            let columns: [String] = [
                field("id"), field("kind"), field("status"), field("agent"), field("target_kind") + ":" + field("target"), field("policy"), field("reason"), shown,
            ]
            print(columns.joined(separator: "\t"))
        }
    }
}

enum ApprovalsDecide {
    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "approve", abstract: "Approve a pending call (it may then run once).")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The approval id (apr_...).") var id: String
        @Option(name: .long, help: "Why (kept with the decision).") var note: String?
        @Option(name: .long, help: "For an input request: the answer, as JSON.") var answer: String?

        func run() async throws {
            var parsed: JSONValue?
            if let answer {
                guard let value = try? JSONParser.parse(answer) else {
                    printError("interlock approvals approve: --answer is not JSON")
                    throw ExitCode(2)
                }
                parsed = value
            }
            try await ApprovalsDecide.decide(client, id, "approve", note, answer: parsed)
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "reject", abstract: "Reject a pending call.")
        @OptionGroup var client: AdminClientOptions
        @Argument(help: "The approval id (apr_...).") var id: String
        @Option(name: .long, help: "Why (shown to the agent).") var note: String?

        func run() async throws { try await ApprovalsDecide.decide(client, id, "reject", note) }
    }

    static func decide(_ client: AdminClientOptions, _ id: String, _ verb: String, _ note: String?, answer: JSONValue? = nil) async throws {
        var body: JSONObject = ["decision": .string(verb)]
        if let note { body["comment"] = .string(note) }
        if let answer { body["answer"] = answer }
        let answer = try await client.send(.POST, "/v1/approvals/\(id)", body: .object(body))
        print("\(answer["id"]?.stringValue ?? id): \(answer["status"]?.stringValue ?? "?")")
    }
}
