# Read by cpack once per package format (CPACK_GENERATOR is the one being made):
# each format gets the systemd unit at its own place (packaging/CMakeLists.txt).
if(CPACK_GENERATOR STREQUAL "DEB")
  set(CPACK_COMPONENTS_ALL ${CPACK_SMTPFENCE_DEB_COMPONENTS})
elseif(CPACK_GENERATOR STREQUAL "RPM")
  set(CPACK_COMPONENTS_ALL ${CPACK_SMTPFENCE_RPM_COMPONENTS})
endif()
