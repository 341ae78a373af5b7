#!/usr/bin/env node
// Compiles TestGLM.sol with solc-js (the compiler as an npm package: no download, no native
// toolchain) and writes build/TestGLM.json with the contract's `abi` and deployment `bytecode`,
// which exeunit/testing/chain.py deploys. Imports of `@openzeppelin/...` are read from
// node_modules; any other import is refused, so nothing outside this folder gets compiled in.
"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const HERE = __dirname;
const SOURCE = "TestGLM.sol";
const CONTRACT = "TestGLM";
const OUTPUT = path.join(HERE, "build", `${CONTRACT}.json`);

function findImports(importPath) {
  if (!importPath.startsWith("@openzeppelin/")) {
    return { error: `import ${importPath} is not allowed: only @openzeppelin/... from node_modules` };
  }
  const file = path.join(HERE, "node_modules", importPath);
  try {
    return { contents: fs.readFileSync(file, "utf8") };
  } catch (err) {
    return { error: `cannot read ${file} (${err.code}): run npm ci in chain/` };
  }
}

const input = {
  language: "Solidity",
  sources: { [SOURCE]: { content: fs.readFileSync(path.join(HERE, SOURCE), "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { [SOURCE]: { [CONTRACT]: ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const problems = output.errors || [];
for (const problem of problems) {
  console.error(problem.formattedMessage || problem.message);
}
if (problems.some((problem) => problem.severity === "error")) {
  process.exit(1);
}
const contract = output.contracts[SOURCE][CONTRACT];
const artifact = {
  contractName: CONTRACT,
  compiler: `solc ${solc.version()}`,
  abi: contract.abi,
  bytecode: `0x${contract.evm.bytecode.object}`,
};
fs.mkdirSync(path.dirname(OUTPUT), { recursive: true });
fs.writeFileSync(`${OUTPUT}.tmp`, `${JSON.stringify(artifact, null, 2)}\n`);
fs.renameSync(`${OUTPUT}.tmp`, OUTPUT);
console.log(`compiled ${CONTRACT} with solc ${solc.version()} into ${path.relative(process.cwd(), OUTPUT)}`);
