"""Test helpers for what a DAW does: an OSC client on its own UDP socket, a polling wait, and a stub
of the REAPER API the shipped Lua import action runs against (under lupa)."""
from __future__ import annotations

import socket
import time
from typing import Any, Callable

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

TIMEOUT = 120.0


class UdpClient:
    """A DAW-like OSC client: sends from its own socket (its own address) and reads replies on it."""

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.log: list[tuple[str, list]] = []

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(build_msg(address, list(args)).dgram, ("127.0.0.1", self.port))

    def raw(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.port))

    def receive(self) -> tuple[str, list]:
        """The next message, also kept in :attr:`log`."""
        msg = OscMessage(self.sock.recv(65535))
        self.log.append((msg.address, list(msg.params)))
        return msg.address, list(msg.params)

    def until(self, address: str, first: object = None, timeout: float = TIMEOUT) -> list:
        """Read replies until ``address`` (with first argument ``first``); return its arguments."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got, params = self.receive()
            if got == address and (first is None or params[0] == first):
                return params
        raise TimeoutError(f"no {address} {first} in {self.log[-10:]}")

    def reply(self, *addresses: str, timeout: float = TIMEOUT) -> tuple[str, list]:
        """The next message whose address is one of ``addresses``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got, params = self.receive()
            if got in addresses:
                return got, params
        raise TimeoutError(addresses)

    def close(self) -> None:
        self.sock.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


REAPER_STUB = r'''
placed, ext, tracks = {}, "", {}
reaper = {
  EnumProjects = function(i) return "proj", PROJECT_FILE end,
  CountTracks = function() return #tracks end,
  GetTrack = function(_, i) return tracks[i + 1] end,
  InsertTrackAtIndex = function(i) tracks[i + 1] = {name = ""} end,
  GetSetMediaTrackInfo_String = function(tr, k, v, set) if set then tr.name = v end return true, tr.name end,
  PCM_Source_CreateFromFile = function(f) local h = io.open(f, "rb"); if h == nil then return nil end; h:close(); return {file = f} end,
  AddMediaItemToTrack = function(tr) local item = {track = tr.name}; placed[#placed + 1] = item; return item end,
  AddTakeToMediaItem = function(item) return {item = item} end,
  SetMediaItemTake_Source = function(take, src) take.item.file = src.file end,
  GetMediaSourceLength = function(src) return 1.0, false end,
  SetMediaItemInfo_Value = function(item, k, v) item[k] = v end,
  GetSetMediaItemTakeInfo_String = function(take, k, v, set) return true, v end,
  GetProjExtState = function(_, s, k) return 1, ext end,
  SetProjExtState = function(_, s, k, v) ext = v end,
  Undo_BeginBlock = function() end, Undo_EndBlock = function() end,
  PreventUIRefresh = function() end, UpdateArrange = function() end,
  ShowMessageBox = function(m) error(m) end,
}
-- REAPER 7 fixed item lanes, source types and the console (the import action's lanes, MIDI and errors)
console = {}
local TRACK_DEFAULTS = { I_FREEMODE = 0, I_NUMFIXEDLANES = 1 }
local function media_type(f)
  local h = io.open(f, "rb"); if h == nil then return "" end
  local head = h:read(12) or ""; h:close()
  if head:sub(1, 4) == "RIFF" and head:sub(9, 12) == "WAVE" then return "WAVE" end
  if head:sub(1, 4) == "MThd" then return "MIDI" end
  if head:sub(1, 4) == "fLaC" then return "FLAC" end
  return ""
end
reaper.GetMediaSourceType = function(src, buf) return media_type(src.file) end
reaper.PCM_Source_Destroy = function(src) src.destroyed = true end
reaper.GetMediaTrackInfo_Value = function(tr, k)
  if tr[k] ~= nil then return tr[k] end
  if k:sub(1, 12) == "C_LANEPLAYS:" then return 0 end
  return TRACK_DEFAULTS[k] or 0
end
reaper.SetMediaTrackInfo_Value = function(tr, k, v) tr[k] = v; return true end
local set_track_string = reaper.GetSetMediaTrackInfo_String
reaper.GetSetMediaTrackInfo_String = function(tr, k, v, set)
  if k == "P_NAME" then return set_track_string(tr, k, v, set) end
  if set then tr[k] = v end
  return tr[k] ~= nil, tr[k] or ""
end
local function track_items(tr)
  local out = {}
  for _, item in ipairs(placed) do if item.track == tr.name then out[#out + 1] = item end end
  return out
end
reaper.CountTrackMediaItems = function(tr) return #track_items(tr) end
reaper.GetTrackMediaItem = function(tr, i) return track_items(tr)[i + 1] end
reaper.GetMediaItemInfo_Value = function(item, k) return item[k] or 0 end
reaper.TimeMap2_timeToQN = function(_, t) return t * 2 end  -- a 120 bpm project
reaper.TimeMap2_QNToTime = function(_, qn) return qn / 2 end
reaper.UpdateTimeline = function() end
reaper.ShowConsoleMsg = function(m) console[#console + 1] = m end
'''
