// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Test Golem Network Token
/// @notice The ERC-20 that payments are tested with on a local chain: it stands in for GLM, which
/// has 18 decimals too. The whole supply goes to whoever deploys it, who then funds the test
/// accounts; nothing can be minted after that, as with a real token.
contract TestGLM is ERC20 {
    constructor(uint256 supply) ERC20("Test Golem Network Token", "tGLM") {
        _mint(msg.sender, supply);
    }
}
