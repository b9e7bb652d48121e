// swift-tools-version:5.9
// Tandem for iOS, iPadOS and macOS: the UniFFI bindings of the Rust client
// engine (module Tandem) over the TandemFFI binary (static libraries + C
// header + module map, as an xcframework).
import PackageDescription

// Where the TandemFFI xcframework comes from.
//
// Local builds: `scripts/build-xcframework.sh` (on macOS) builds the Rust
// library for every slice, generates the bindings into Sources/Tandem/Generated
// and writes Frameworks/TandemFFI.xcframework, which the path below names.
//
// Releases: zip the xcframework, publish it, and replace the path target with
//     .binaryTarget(
//         name: "TandemFFI",
//         url: "https://<release host>/TandemFFI-<version>.xcframework.zip",
//         checksum: "<swift package compute-checksum TandemFFI-<version>.xcframework.zip>"
//     )
// The generated Tandem.swift must come from the same build as the xcframework
// (its checksums are checked against the library at first use), so a release
// ships both together.
//
// The name TandemFFI is the same in four places: this target, the
// xcframework's file name, the module in its module.modulemap, and
// `ffi_module_name` in bindings/ffi/uniffi.toml (which the generated Swift
// imports).
let tandemFFI: Target = .binaryTarget(
    name: "TandemFFI",
    path: "Frameworks/TandemFFI.xcframework"
)

let package = Package(
    name: "Tandem",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Tandem", targets: ["Tandem"]),
    ],
    targets: [
        tandemFFI,
        .target(
            name: "Tandem",
            dependencies: ["TandemFFI"],
            path: "Sources/Tandem",
            linkerSettings: [
                // TLS certificate checks use the platform verifier.
                .linkedFramework("Security"),
                .linkedFramework("CoreFoundation"),
            ]
        ),
        .testTarget(
            name: "TandemTests",
            dependencies: ["Tandem"],
            path: "Tests/TandemTests"
        ),
    ]
)
